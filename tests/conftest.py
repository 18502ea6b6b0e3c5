"""Fixtures shared by every test: tiny random models of every supported family, built in-process.

Nothing here touches the network: models come from `AutoModelForCausalLM.from_config` and the
tokenizer is trained in-process with the `tokenizers` library.
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny import FAMILIES, VOCAB_SIZE, tiny_model, tiny_tokenizer  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """Tokenized data goes to a folder of this session (torchrun children inherit the variable)."""
    folder = tmp_path_factory.mktemp("data-cache")
    previous = os.environ.get("MINITRON_DATA_CACHE")
    os.environ["MINITRON_DATA_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("MINITRON_DATA_CACHE", None)
    else:
        os.environ["MINITRON_DATA_CACHE"] = previous


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def model(family):
    torch.manual_seed(0)
    return tiny_model(family)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def batches():
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB_SIZE, (2, 16), generator=generator) for _ in range(3)]
