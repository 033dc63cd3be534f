"""Running the pipeline over files: the output file and its resume (output), run summaries (summary), the
local streaming engine (local), the Ray engine (ray) and tagging alone (predict)."""
