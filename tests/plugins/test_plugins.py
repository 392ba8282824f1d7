"""Plugin loading through the real entry-point mechanism, failures, duplicates, the example plugin."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidcc import plugins
from vidcc.errors import PluginError
from vidcc.hookspecs import hookimpl

REPO = Path(__file__).resolve().parents[2]


def write_plugin_dist(root: Path, dist: str, entry: str, module: str, source: str) -> None:
    """A minimal installed distribution (dist-info + module) on a path entry: what pip would leave."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"  # pip normalises: a dash would end the name
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[vidcc]\n{entry} = {module}\n")


def vidcc(*args, env_extra=None, path=None):
    env = dict(os.environ, **(env_extra or {}))
    if path:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "vidcc.cli", *args], capture_output=True, text=True, env=env, cwd=REPO)


GOOD = '''
from dataclasses import dataclass
from vidcc.hookspecs import hookimpl
from vidcc.pass_manager import Pass, PassResult

@dataclass(frozen=True)
class Noop(Pass):
    """Does nothing, from a plugin."""
    name = "plugin-noop"
    def run(self, graph, ctx):
        return PassResult(False)

@hookimpl
def vidcc_register_passes(register):
    register(Noop)
'''


def test_entry_point_plugin_loads_and_broken_one_is_skipped(tmp_path):
    write_plugin_dist(tmp_path, "good-plugin", "goodie", "goodie_mod", GOOD)
    write_plugin_dist(tmp_path, "bad-plugin", "baddie", "baddie_mod", "import not_a_module_anywhere\n")
    r = vidcc("passes", "--json", path=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {"name": "plugin-noop", "plugin": "goodie"}.items() <= next(p for p in data["passes"] if p["name"] == "plugin-noop").items()
    assert "not_a_module_anywhere" in data["plugin_failures"]["baddie"]
    r = vidcc("passes", "--json", path=tmp_path, env_extra={"VIDCC_DISABLE_PLUGINS": "goodie,baddie"})
    data = json.loads(r.stdout)
    assert "plugin-noop" not in {p["name"] for p in data["passes"]} and data["plugin_failures"] == {}


def test_trace_plugins_prints_hook_calls(tmp_path):
    r = vidcc("passes", "--json", env_extra={"VIDCC_TRACE_PLUGINS": "1"})
    assert r.returncode == 0 and "vidcc_register_passes" in r.stderr


def test_duplicate_name_names_both_plugins():
    class A:
        @hookimpl
        def vidcc_register_pipelines(self, register):
            register("dce", "remove-identity")

    plugins.reset(extra=[("plugin-a", A())])
    with pytest.raises(PluginError, match=r"'dce' is registered twice: by plugin 'builtin-passes' and by plugin 'plugin-a'"):
        plugins.registry()


def test_duplicate_name_is_one_line_on_the_cli(tmp_path):
    write_plugin_dist(tmp_path, "dup-plugin", "dupe", "dupe_mod", GOOD.replace('"plugin-noop"', '"dce"'))
    r = vidcc("passes", path=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "'builtin-passes'" in r.stderr and "'dupe'" in r.stderr


def test_builtins_register_through_entry_points():
    reg = plugins.registry()
    assert reg.passes["dce"].plugin == "builtin-passes"


def test_example_plugin_installs_and_runs_through_cli(tmp_path, mlp_path):
    """`pip install plugins/vidcc-name-nodes`, then its pass is listed and runs via `vidcc opt -p`."""
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(REPO / "plugins" / "vidcc-name-nodes")],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {"VIDCC_DISABLE_PLUGINS": ""}
    listed = json.loads(vidcc("passes", "--json", path=site, env_extra=env).stdout)["passes"]
    assert {"name": "name-nodes", "plugin": "name-nodes"}.items() <= next(p for p in listed if p["name"] == "name-nodes").items()
    out = tmp_path / "named.onnx"
    r = vidcc("opt", str(mlp_path), "-p", "name-nodes{all=true,prefix=n_}", "-o", str(out), "--json", path=site, env_extra=env)
    assert r.returncode == 0, r.stderr
    import onnx

    names = [n.name for n in onnx.load(out).graph.node]
    assert names == ["n_MatMul_mm", "n_Add_biased", "n_Relu_act", "n_Identity_y", "n_Sigmoid_dead"]
