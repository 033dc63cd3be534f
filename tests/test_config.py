"""One source of truth for settings: every run option from the TOML config, flags over it, each default once,
and a wrong key answered with the nearest right one."""

import subprocess
import sys
from pathlib import Path

import pytest

from refineg.config import LLMConfig, RunConfig, ServiceConfig, load_config
from refineg.errors import ConfigError
from refineg.llm.families import BY_NAME, CONVENTIONS

REFINEG = str(Path(sys.executable).parent / "refineg")


def test_run_options_come_from_the_config_and_flags_override_them(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        '[run]\nimages = ["a", "b"]\nstrict = true\nwindow = 12\nclip = "some/clip"\n'
        '[service]\nport = 9001\nmax_body_mb = 2.5\n[llm]\ntypes = "ccks"\n'
    )
    cfg = load_config(path)
    assert cfg.run.images == [Path("a"), Path("b")] and cfg.run.strict and cfg.run.window == 12
    assert cfg.run.clip == "some/clip" and cfg.service.port == 9001 and cfg.service.max_body == 2_500_000
    assert cfg.llm.types == "ccks"
    flags = load_config(path, {"run": {"images": [Path("c")], "window": None}, "service": {"port": 9002}})
    assert flags.run.images == [Path("c")] and flags.run.window == 12 and flags.service.port == 9002


def test_a_commands_own_defaults_sit_under_the_config_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[tagger]\nepochs = 3\n")
    assert load_config(None, defaults={"tagger": {"epochs": 8}}).tagger.epochs == 8
    assert load_config(path, defaults={"tagger": {"epochs": 8, "seed": 5}}).tagger.epochs == 3
    assert load_config(path, defaults={"tagger": {"epochs": 8, "seed": 5}}).tagger.seed == 5
    assert load_config(path, {"tagger": {"epochs": 2}}, defaults={"tagger": {"epochs": 8}}).tagger.epochs == 2


@pytest.mark.parametrize(
    "toml, says",
    [
        ("[llm]\ntimout = 3\n", "[llm] timout: unknown key; did you mean 'timeout'?"),
        ("[lm]\ntimeout = 3\n", "[lm]: unknown section; did you mean 'llm'?"),
        ("[run]\nwindw = 3\n", "[run] windw: unknown key; did you mean 'window'?"),
        ("[run]\nzzz = 3\n", "[run] zzz: unknown key; known keys: images, demos"),
        ('[llm]\nbase_url = "localhost:8000/v1"\nmodel = "m"\n', "not an http(s) URL"),
        ('[llm]\nbox_format = "qwen9"\n', "unknown box format 'qwen9'"),
        ("[llm]\nconcurrency = 0\n", "[llm] concurrency: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_config_is_one_clear_error(tmp_path, toml, says):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert says in str(info.value) and str(path) in str(info.value)


def test_the_old_spelling_of_the_prompt_types_still_works(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[synth]\ntypeset = "ccks"\nn_keep = 3\n')
    cfg = load_config(path)
    assert cfg.llm.types == "ccks" and cfg.synth.n_keep == 3


def test_lists_of_families_and_conventions_come_from_their_tables():
    described = LLMConfig.model_fields["box_format"].description
    assert all(name in described for name in [*BY_NAME, *CONVENTIONS])
    res = subprocess.run([REFINEG, "run", "--help"], capture_output=True, text=True, env={"COLUMNS": "400", "PATH": ""})
    assert res.returncode == 0 and all(name in res.stdout for name in BY_NAME)


def test_each_default_is_declared_once():
    # the service's body limit and the demo's epochs live in one place each
    from refineg import demo, service

    assert not hasattr(service, "MAX_BODY") and ServiceConfig().max_body == 20_000_000
    assert demo.DEMO_DEFAULTS == {"tagger": {"epochs": 8}} and RunConfig().tagger.epochs == 10
