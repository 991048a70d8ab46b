"""Worker groups, the pure part: ``[models.distributed]`` checks (the heads' split over the
ranks), the model's shape read from config.json and GGUF headers, the hostfiles and rank
environments, the launcher choice and the launch command line."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import orjson
import pytest

from gateway.group import launch_command
from shared import group
from shared.config import ConfigError, DistributedConfig, ModelConfig, default_model_path, load_toml, validate_model
from shared.shape import Shape, read_shape


def llama_folder(tmp_path: Path, heads: int = 8, kv: int = 4, inter: int = 64, layers: int = 4) -> Path:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_attention_heads": heads,
                "num_key_value_heads": kv,
                "intermediate_size": inter,
                "num_hidden_layers": layers,
            }
        )
    )
    return tmp_path


def gguf(path: Path, meta: dict[str, object]) -> Path:
    """A GGUF header with ``meta`` (strings and u32s) and no tensors."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta))
    for k, v in meta.items():
        key = k.encode()
        out += struct.pack("<Q", len(key)) + key
        if isinstance(v, str):
            out += struct.pack("<IQ", 8, len(v.encode())) + v.encode()
        else:
            out += struct.pack("<II", 4, v)
    path.write_bytes(out)
    return path


def test_smollm2s_shape_comes_from_its_gguf_header() -> None:
    assert read_shape(default_model_path()) == Shape("llama", 9, 3, 1536, 30)


def test_a_gguf_header_without_kv_heads_means_as_many_as_heads(tmp_path: Path) -> None:
    p = gguf(
        tmp_path / "m.gguf",
        {"general.architecture": "llama", "llama.attention.head_count": 6, "llama.feed_forward_length": 12,
         "llama.block_count": 2},
    )  # fmt: skip
    assert read_shape(p) == Shape("llama", 6, 6, 12, 2)


def test_three_ranks_split_smollm2_and_two_do_not() -> None:
    smol = Shape("llama", 9, 3, 1536, 30)
    group.check_split(smol, 3, "tensor")
    with pytest.raises(group.GroupConfigError) as e:
        group.check_split(smol, 2, "tensor")
    msg = str(e.value)
    assert "9 attention heads, 3 KV heads and 1536 MLP units" in msg
    assert "9 attention heads, 3 KV heads don't split in 2" in msg and "group sizes that work: 3" in msg


def test_the_mlp_must_split_too() -> None:
    with pytest.raises(group.GroupConfigError, match="10 MLP units don't split in 4"):
        group.check_split(Shape("llama", 8, 4, 10, 2), 4, "tensor")


def test_a_pipeline_needs_a_layer_per_rank_and_mlx_lms_split() -> None:
    group.check_split(Shape("x", 9, 3, 7, 4), 4, "pipeline", pipelines=True)
    with pytest.raises(group.GroupConfigError, match="at least 5 layers; the model has 4"):
        group.check_split(Shape("x", 9, 3, 7, 4), 5, "pipeline", pipelines=True)
    with pytest.raises(group.GroupConfigError, match="mlx-lm's llama model has no pipeline split"):
        group.check_split(Shape("llama", 9, 3, 7, 4), 2, "pipeline", pipelines=False)


def test_mlx_lms_llama_has_no_pipeline_split_and_deepseek_v3_has_one() -> None:
    assert group.pipelines("llama") is False
    assert group.pipelines("deepseek_v3") is True
    assert group.pipelines("no_such_model") is None


def model(path: str, **d: object) -> ModelConfig:
    return ModelConfig(name="m", path=path, distributed=DistributedConfig(**d))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hosts": ["127.0.0.1"]}, "hosts lists 1 rank(s); a group needs at least 2"),
        ({"hosts": ["127.0.0.1"] * 2, "backend": "gloo"}, "backend = 'gloo' must be one of ring, jaccl, mpi, nccl"),
        ({"hosts": ["127.0.0.1"] * 2, "strategy": "data"}, "strategy = 'data' must be one of tensor, pipeline"),
        ({"hosts": ["127.0.0.1"] * 2, "launcher": "ssh"}, "launcher = 'ssh' must be one of"),
        ({"hosts": ["10.255.0.2", "127.0.0.1"]}, "hosts[0] = '10.255.0.2' is not an address of this machine"),
        ({"hosts": ["127.0.0.1", "10.0.0.2"]}, "can't reach rank 0 at a loopback address"),
        ({"hosts": ["127.0.0.1"] * 2, "backend": "mpi", "launcher": "hearth"}, 'need launcher = "mlx.launch"'),
        ({"hosts": ["127.0.0.1"] * 2, "backend": "jaccl", "launcher": "hearth"}, 'need launcher = "mlx.launch"'),
        ({"hosts": ["127.0.0.1"] * 2, "port": 65535}, "port = 65535 must be 0"),
        ({"hosts": ["127.0.0.1"] * 3}, "heads to divide by 3: llama has 8 attention heads, 4 KV heads"),
    ],
)
def test_bad_group_settings_are_named(tmp_path: Path, settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_model(model(str(llama_folder(tmp_path)), **settings))
    assert "[models.distributed]" in str(e.value) and message in str(e.value)


def test_a_group_is_one_chat_replica(tmp_path: Path) -> None:
    path = str(llama_folder(tmp_path))
    d = DistributedConfig(hosts=["127.0.0.1"] * 2)
    with pytest.raises(ConfigError, match="replicas = 2 must be 1"):
        validate_model(ModelConfig(name="m", path=path, replicas=2, distributed=d))
    with pytest.raises(ConfigError, match="only chat models run as a worker group"):
        validate_model(ModelConfig(name="m", path=path, kind="embedding", distributed=d))
    validate_model(ModelConfig(name="m", path=path, distributed=d))


def test_the_table_reads_from_toml_and_travels_to_the_worker_as_json(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    llama_folder(tmp_path / "model")
    (tmp_path / "hearth.toml").write_text(
        '[[models]]\nname = "g"\npath = "model"\n\n[models.distributed]\n'
        'hosts = ["127.0.0.1", "127.0.0.1"]\nstrategy = "tensor"\n'
    )
    cfg = load_toml(tmp_path / "hearth.toml").models[0]
    assert cfg.distributed == DistributedConfig(hosts=["127.0.0.1", "127.0.0.1"])
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    (tmp_path / "hearth.toml").write_text(
        '[[models]]\nname = "g"\npath = "model"\n\n[models.distributed]\nhosts = ["127.0.0.1"]\nranks = 2\n'
    )
    with pytest.raises(ConfigError, match="unknown setting"):
        load_toml(tmp_path / "hearth.toml")


def test_the_ring_hostfile_is_what_mlx_launch_writes() -> None:
    hosts = ["127.0.0.1", "localhost", "10.0.0.2"]
    assert group.ring_hostfile(hosts, [5000, 5001, 5002]) == [["127.0.0.1:5000"], ["127.0.0.1:5001"], ["10.0.0.2:5002"]]
    assert group.rank_env(2, "/run/h.json") == {
        "MLX_RANK": "2", "MLX_HOSTFILE": "/run/h.json", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    assert group.ports_from(32323, 3) == group.Ports((32323, 32324, 32325), 32326)


def test_the_launcher_is_hearth_for_local_ring_ranks_and_mlx_launch_otherwise() -> None:
    local = ["127.0.0.1"] * 2
    assert group.launcher_of(local, "ring", "auto") == "hearth"
    assert group.launcher_of(["127.0.0.1", "10.0.0.2"], "ring", "auto") == "mlx.launch"
    assert group.launcher_of(local, "jaccl", "auto") == "mlx.launch"
    assert group.launcher_of(local, "ring", "mlx.launch") == "mlx.launch"


def test_mlx_launchs_hostfile_and_command_line(tmp_path: Path) -> None:
    d = DistributedConfig(hosts=["127.0.0.1", "10.0.0.2"], port=40000)
    hostfile = group.launch_hostfile(d.hosts, "ring")
    assert hostfile == {
        "backend": "ring",
        "envs": [],
        "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "10.0.0.2", "ips": ["10.0.0.2"]}],
    }
    # this machine by another of its addresses still runs without SSH (mlx.launch's rule: "127.0.0.1")
    here = group.launch_hostfile(["127.0.0.2", "10.0.0.2"], "jaccl")["hosts"]
    assert here == [{"ssh": "127.0.0.1", "ips": []}, {"ssh": "10.0.0.2", "ips": []}]
    orjson.dumps(hostfile)
    worker = ["/venv/bin/python", "-m", "worker", "--endpoint", "ipc:///run/w.sock"]
    env = {"PYTHONPATH": "/src", "OPENBLAS_NUM_THREADS": "1", "SECRET": "x"}
    cmd = launch_command(d, tmp_path / "h.json", group.ports_from(40000, 2), worker, env)
    assert cmd[0].endswith("mlx.launch")
    assert cmd[1:] == [
        "--hostfile", str(tmp_path / "h.json"), "--backend", "ring", "--python", "/venv/bin/python",
        "--starting-port", "40000", "--env", "PYTHONPATH=/src", "--env", "OPENBLAS_NUM_THREADS=1",
        "--", "-m", "worker", "--endpoint", "ipc:///run/w.sock",
    ]  # fmt: skip


def test_an_operators_hostfile_must_list_a_host_per_rank(tmp_path: Path) -> None:
    f = tmp_path / "h.json"
    f.write_text(json.dumps({"backend": "jaccl", "hosts": [{"ssh": "a"}, {"ssh": "b"}]}))
    group.check_hostfile(str(f), ["127.0.0.1", "10.0.0.2"], "mlx.launch")
    with pytest.raises(group.GroupConfigError, match="lists 2 host"):
        group.check_hostfile(str(f), ["127.0.0.1"] * 3, "mlx.launch")
    with pytest.raises(group.GroupConfigError, match='hostfile is for launcher = "mlx.launch"'):
        group.check_hostfile(str(f), ["127.0.0.1"] * 2, "hearth")


def test_a_draft_model_is_refused_in_a_group(tmp_path: Path) -> None:
    path = str(llama_folder(tmp_path))
    d = DistributedConfig(hosts=["127.0.0.1"] * 2)
    with pytest.raises(ConfigError, match="can't run a draft_model yet"):
        validate_model(ModelConfig(name="m", path=path, draft_model=path, distributed=d))
