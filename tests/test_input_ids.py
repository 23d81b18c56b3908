"""Token ids outside the embedding table raise InputError before the compiled code runs (which would read out of
bounds: Inductor's indexing has no checks), for token ids and token type ids alike."""
import pytest
import torch

import fxopt


class Embedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Embedding(100, 16)
        self.types = torch.nn.Embedding(2, 16)

    def forward(self, input_ids, token_type_ids):
        return self.tokens(input_ids) + self.types(token_type_ids)


@pytest.fixture(scope="module")
def compiled():
    ids = torch.randint(0, 100, (2, 8))
    return fxopt.compile(Embedder().eval(), {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)})


@pytest.mark.parametrize("field, value, message", [
    ("input_ids", 100, "input 'input_ids' holds index 100, outside the table it selects rows of (100 rows"),
    ("input_ids", -1, "input 'input_ids' holds index -1"),
    ("token_type_ids", 2, "input 'token_type_ids' holds index 2, outside the table it selects rows of (2 rows"),
])
def test_out_of_range_ids_are_named(compiled, field, value, message):
    ids = torch.randint(0, 100, (2, 8))
    inputs = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
    inputs[field][1, 3] = value
    with pytest.raises(fxopt.InputError, match=message.replace("(", r"\(")):
        compiled(**inputs)


def test_ids_in_range_run(compiled):
    ids = torch.tensor([[0, 99, 5, 1, 2, 3, 4, 98]])  # the table's first and last rows included
    out = compiled(input_ids=ids, token_type_ids=torch.ones_like(ids))
    assert out.shape == (1, 8, 16)


@pytest.mark.slow
def test_minilm_out_of_vocabulary_id(minilm, minilm_compiled):
    inputs = minilm.inputs(2, 16)
    inputs["input_ids"][0, 0] = minilm.model.config.vocab_size
    with pytest.raises(fxopt.InputError, match="input 'input_ids' holds index 30522"):
        minilm_compiled(**inputs)
