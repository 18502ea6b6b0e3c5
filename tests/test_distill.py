"""The distillation loop on tiny models: it learns, it resumes exactly, it refuses bad input."""
import json
import signal

import pytest
import torch

from minitron.arch import get_adapter
from minitron.config import DistillConfig
from minitron.distill.loop import TrainingInterrupted, distill
from minitron.errors import MinitronError
from minitron.importance import estimate_importance
from minitron.prune import prune
from tests.tiny import VOCAB_SIZE, tiny_model


def _blocks(seed: int, count: int, seq_len: int = 16) -> torch.Tensor:
    # Learnable structure: each sequence counts upward from a random start, modulo the vocabulary.
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, VOCAB_SIZE, (count, 1), generator=generator)
    return (starts + torch.arange(seq_len)) % VOCAB_SIZE


def _student_teacher(family: str = "llama", sharpen: float = 1.0):
    torch.manual_seed(0)
    teacher = tiny_model(family)
    # A random tiny model predicts almost uniform tokens, leaving its student next to no KL to learn
    # away; a larger LM head gives the teacher peaked predictions worth distilling.
    with torch.no_grad():
        for param in get_adapter(teacher).lm_head_parameters(teacher):
            param.mul_(sharpen)
    scores = estimate_importance(teacher, [_blocks(1, 4)], progress=False)
    student = prune(teacher, scores, {"intermediate_size": 32, "num_hidden_layers": 3})
    return student, teacher


def _config(**overrides) -> DistillConfig:
    settings = dict(seq_len=16, micro_batch_size=2, steps=12, lr=3e-3, warmup_steps=2, eval_every=0,
                    eval_samples=4, save_every=0, chunk_size=10, precision="fp32")
    return DistillConfig(**{**settings, **overrides})


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3"])
def test_distillation_lowers_validation_kl(family):
    student, teacher = _student_teacher(family, sharpen=10.0)
    records = []
    distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(eval_every=1, steps=30, lr=3e-4),
            on_step=lambda step, record: records.append(record))
    assert records[-1]["val_kl"] < records[0]["val_kl"] * 0.9
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


@pytest.mark.parametrize("overrides", [dict(loss="reverse_kl"), dict(loss="jsd"), dict(loss="topk_kl", top_k=8),
                                       dict(ce_weight=0.5), dict(hidden_loss="cosine"), dict(hidden_loss="mse"),
                                       dict(grad_accum=2, micro_batch_size=1), dict(gradient_checkpointing=True)])
def test_every_loss_setting_trains(overrides):
    student, teacher = _student_teacher()
    records = []
    distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(steps=2, **overrides),
            on_step=lambda step, record: records.append(record))
    assert len(records) == 2 and all(r["loss"] == r["loss"] for r in records)


def test_ce_training_without_teacher():
    student, _ = _student_teacher()
    records = []
    distill(student, None, _blocks(2, 64), _blocks(3, 4), _config(loss="ce", steps=8, eval_every=1),
            on_step=lambda step, record: records.append(record))
    assert records[-1]["val_student_loss"] < records[0]["val_student_loss"]


@pytest.mark.parametrize("overrides", [{}, {"hidden_loss": "cosine"}])  # the hidden loss's balance is state too
def test_resume_reproduces_the_uninterrupted_run(tmp_path, overrides):
    student, teacher = _student_teacher()
    baseline = []
    distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(**overrides),
            on_step=lambda step, record: baseline.append(record["loss"]))

    student, teacher = _student_teacher()

    def interrupt(step, record):
        if step == 5:
            signal.raise_signal(signal.SIGINT)

    first = []
    with pytest.raises(TrainingInterrupted):
        distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(**overrides), out=tmp_path,
                on_step=lambda step, record: (first.append(record["loss"]), interrupt(step, record)))
    assert len(first) == 5
    student, teacher = _student_teacher()
    rest = []
    distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(**overrides), out=tmp_path, resume=True,
            on_step=lambda step, record: rest.append(record["loss"]))
    assert len(rest) == 7
    torch.testing.assert_close(torch.tensor(first + rest), torch.tensor(baseline), rtol=1e-5, atol=1e-6)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12


def test_bad_input_is_refused():
    student, _ = _student_teacher()
    other = tiny_model("llama", vocab_size=VOCAB_SIZE + 8)
    with pytest.raises(MinitronError, match="vocabularies differ"):
        distill(student, other, _blocks(2, 8), _blocks(3, 2), _config(steps=1))
    with pytest.raises(MinitronError, match="budget of zero"):
        _config(steps=0)
    with pytest.raises(MinitronError, match="give a training budget"):
        DistillConfig()


def test_python_api_takes_a_data_spec(tmp_path, tokenizer):
    import minitron
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i} about pruning and distillation" for i in range(200)))
    student, teacher = _student_teacher()
    trained = minitron.distill(student, teacher, str(corpus), config=_config(steps=2, eval_samples=2),
                               tokenizer=tokenizer)
    assert trained is student


def _interrupted_at_step_5(out) -> None:
    def interrupt(step, record):
        if step == 5:
            signal.raise_signal(signal.SIGINT)

    student, teacher = _student_teacher()
    with pytest.raises(TrainingInterrupted):
        distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(), out=out, on_step=interrupt)


def test_resume_refuses_a_changed_trajectory_and_honours_a_safe_change(tmp_path):
    student, teacher = _student_teacher()
    baseline = []
    distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(),
            on_step=lambda step, record: baseline.append(record["loss"]))
    _interrupted_at_step_5(tmp_path)
    student, teacher = _student_teacher()
    with pytest.raises(MinitronError) as error:
        distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(lr=5e-3, loss="jsd"), out=tmp_path,
                resume=True, on_step=lambda step, record: pytest.fail("trained with changed settings"))
    assert "lr (--lr): 0.003 in the checkpoint, now 0.005" in str(error.value)
    assert "loss (--loss): 'forward_kl' in the checkpoint, now 'jsd'" in str(error.value)
    assert "another --out" in str(error.value) and (tmp_path / "checkpoint" / "position.json").is_file()
    # The same global batch split into two micro-batches, and another checkpoint interval: the same run.
    rest = []
    distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(micro_batch_size=1, grad_accum=2, save_every=4),
            out=tmp_path, resume=True, on_step=lambda step, record: rest.append(record["loss"]))
    assert len(rest) == 7
    torch.testing.assert_close(torch.tensor(rest), torch.tensor(baseline[5:]), rtol=1e-4, atol=1e-6)


def _other_tokenizer(tokenizer):
    """A tokenizer of the same size with another vocabulary: two ordinary tokens trade ids."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    first, second = (token for token, index in vocab.items() if index in (100, 101))
    vocab[first], vocab[second] = vocab[second], vocab[first]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def test_a_teacher_with_another_tokenizer_of_the_same_size_is_refused(tokenizer):
    student, teacher = _student_teacher()
    other = _other_tokenizer(tokenizer)
    assert len(other) == len(tokenizer) and teacher.config.vocab_size == student.config.vocab_size
    with pytest.raises(MinitronError, match="tokenizer is not the student's .*2 tokens differ"):
        distill(student, teacher, _blocks(2, 8), _blocks(3, 2), _config(steps=1), tokenizer=tokenizer,
                teacher_tokenizer=other, on_step=lambda step, record: pytest.fail("trained"))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])  # untied head, tied head, soft-capped logits
def test_a_teacher_with_padded_embedding_rows_distils_over_the_shared_vocabulary(family, tokenizer):
    runs = []
    for padding in (0, 16):
        student, teacher = _student_teacher(family, sharpen=10.0)
        if padding:
            teacher.resize_token_embeddings(VOCAB_SIZE + padding)
            with torch.no_grad():  # padding rows with real rows' logits: distilled, they would change the loss
                teacher.get_output_embeddings().weight[VOCAB_SIZE:] = teacher.get_input_embeddings().weight[:padding]
        records = []
        distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(steps=3, eval_every=1), tokenizer=tokenizer,
                teacher_tokenizer=tokenizer, on_step=lambda step, record: records.append(record))
        runs.append(records)
    keys = ["loss", "val_kl", "val_student_loss", "val_teacher_loss"]
    unpadded, padded = ([[r[k] for k in keys] for r in records] for records in runs)
    torch.testing.assert_close(torch.tensor(padded), torch.tensor(unpadded), rtol=1e-5, atol=1e-6)
