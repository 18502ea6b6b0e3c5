"""`minitron run --dry-run` / `prune --dry-run`: what each process holds per stage, from configs alone, and
whether it fits; the activation estimate checked against what autograd really saves."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from minitron.cli import main
from minitron.dryrun import recipe_memory
from minitron.memory import GIB, Layout, sizes_of
from minitron.recipe import load_recipe
from tests.test_seed_models import RECIPES, llama_3_1_8b


def _saved_activation_bytes(config, seq_len: int) -> int:
    """Bytes autograd saves for backward in one decoder layer under bf16 autocast, weights (and their
    bf16 casts) left out: what the estimate's per-layer activations stand for."""
    model = AutoModelForCausalLM.from_config(config)
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        if tuple(tensor.shape) not in weight_shapes:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    input_ids = torch.randint(0, config.vocab_size, (1, seq_len))
    positions = torch.arange(seq_len)[None]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = model.model.embed_tokens(input_ids).detach().requires_grad_()
        rotary = model.model.rotary_emb(hidden, positions)
        model.model.layers[0](hidden, position_embeddings=rotary, attention_mask=None, position_ids=positions)
    return sum(saved.values())


def test_activation_estimate_is_within_a_fifth_of_what_autograd_saves():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=704, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, num_hidden_layers=1, attn_implementation="sdpa")
    measured = _saved_activation_bytes(config, seq_len=96) / 96  # 96 tokens: no activation has a weight's shape
    estimate = sizes_of(config).activation_bytes_per_token_layer()
    assert abs(estimate - measured) / measured < 0.2, (estimate, measured)


def test_recipe_memory_shards_with_processes_and_says_what_does_not_fit():
    recipe, teacher = load_recipe(RECIPES / "llama-3.1-8b-width.yaml"), llama_3_1_8b()
    one = {row.stage: row for row in recipe_memory(recipe, teacher, Layout(1, "ddp", "auto", 80.0))[0]}
    eight = {row.stage: row for row in recipe_memory(recipe, teacher, Layout(8, "fsdp", "auto", 80.0))[0]}
    assert list(one) == ["00-correction train", "01-4b-width importance", "01-4b-width prune",
                         "01-4b-width distill", "01-4b-width eval"]
    params = sizes_of(teacher).params
    assert one["01-4b-width importance"].weights == 2 * params  # bf16, the whole model on each process
    assert one["00-correction train"].optimizer == 8 * params  # AdamW's two fp32 moments
    assert eight["00-correction train"].optimizer == 8 * params / 8  # sharded over 8 processes
    assert not one["00-correction train"].fits and not one["01-4b-width distill"].fits  # 8B + AdamW > 80 GB
    assert all(row.fits for row in eight.values())
    assert eight["01-4b-width distill"].teacher == 2 * params and "teacher replicated" in eight["01-4b-width distill"].note


def test_run_and_prune_dry_run_print_the_table_offline(tmp_path, capsys):
    llama_3_1_8b().save_pretrained(tmp_path / "llama")
    config_json = str(tmp_path / "llama" / "config.json")
    assert main(["run", str(RECIPES / "llama-3.1-8b-width.yaml"), "--dry-run", "--teacher-config", config_json,
                 "--nproc", "8", "--sharding", "fsdp", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "8 process(es), fsdp" in out and "01-4b-width distill" in out
    assert f"{2 * sizes_of(llama_3_1_8b()).params / GIB:>8.1f}" in out  # bf16 teacher weights, in GiB
    assert main(["prune", "--model", config_json, "--hidden-size", "3072", "--dry-run", "--nproc", "2",
                 "--gpu-memory", "24", "--seq-len", "2048"]) == 0
    out = capsys.readouterr().out
    assert "params total" in out and "distill" in out and "NO" in out  # an 8B teacher + student on 24 GB
    assert main(["prune", "--model", config_json, "--hidden-size", "3072", "--dry-run", "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err


def test_prune_dry_run_sizes_a_short_context_model_at_its_own_context(tmp_path, capsys):
    # Without --seq-len the table uses 4,096 tokens, or the model's max_position_embeddings where shorter.
    from tests.tiny import tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "tiny")  # max_position_embeddings 128
    assert main(["prune", "--model", str(tmp_path / "tiny"), "--intermediate-size", "48", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "batch 1 x 128" in out and "x 4096" not in out


def test_teacher_sharding_auto_shards_only_where_a_replicated_teacher_does_not_fit():
    from minitron.memory import replicated_teacher_fits

    teacher = llama_3_1_8b()
    student = LlamaConfig(**{**teacher.to_dict(), "hidden_size": 3072, "intermediate_size": 9216,
                             "num_attention_heads": 24, "head_dim": 128})
    settings = dict(processes=8, fsdp=True, micro_batch_size=1, seq_len=4096, chunk_size=1024,
                    gradient_checkpointing=True)
    assert replicated_teacher_fits(student, teacher, gpu_memory_gib=80, **settings)  # 16 GB of bf16 teacher
    assert not replicated_teacher_fits(student, teacher, gpu_memory_gib=24, **settings)


def test_teacher_sharding_auto_replicates_on_one_cpu_process(tmp_path, capsys):
    from minitron.config import DistillConfig
    from minitron.distill.dist import current_env
    from minitron.distill.sharding import resolve_teacher_sharding

    config = DistillConfig(steps=1, fsdp=True, teacher_sharding="auto")
    resolved = resolve_teacher_sharding(config, current_env(), "unused", "unused")  # nothing to shard: no configs read
    assert resolved.teacher_sharding == "replicate" and "--teacher-sharding auto: replicate" in capsys.readouterr().out
    with pytest.raises(Exception, match="replicate, shard or auto"):
        DistillConfig(steps=1, teacher_sharding="sometimes")
