"""fxopt embed: sentence embeddings of a text file from a saved MiniLM artifact, in this process and on a local Ray
(2 actors × 1 thread), the same vectors either way; bad arguments are one line before any work."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fxopt
from fxopt.embedding import Embedder, embed_texts, read_lines
from fxopt.errors import ArtifactError, InputError
from fxopt.metrics import evaluation_sentences, pooled
from fxopt.tools.cli import main


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.txt"
    sentences = evaluation_sentences(64, min_words=3)
    path.write_text("\n".join(sentences[:30]) + "\n\n" + "\n".join(sentences[30:]) + "\n")  # a blank line too
    return path


def test_embeddings_are_sentence_transformers_pooling(minilm, minilm_artifact):
    texts = ["The quick brown fox.", "A much longer sentence about licenses and their many conditions."]
    got = Embedder(minilm_artifact)(texts)
    encoded = minilm.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.model(**encoded).last_hidden_state
    want = torch.nn.functional.normalize(pooled(hidden, encoded["attention_mask"]), dim=-1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1)


def test_cli_embeds_a_file_to_npy_and_parquet(minilm_artifact, docs, tmp_path, capsys):
    texts = read_lines(docs)
    assert len(texts) == len(evaluation_sentences(64, min_words=3))  # the blank line is skipped
    want = embed_texts(minilm_artifact, texts, batch_size=16)
    assert main(["embed", str(minilm_artifact), str(docs), "--out", str(tmp_path / "e.npy"), "--batch-size", "16"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), want)
    assert "documents/s" in capsys.readouterr().err
    assert main(["embed", str(minilm_artifact), str(docs), "--out", str(tmp_path / "e.parquet"),
                 "--batch-size", "16"]) == 0
    import pyarrow.parquet as pq
    np.testing.assert_array_equal(np.stack(pq.read_table(tmp_path / "e.parquet")["embedding"].to_numpy(
        zero_copy_only=False)), want)


@pytest.mark.slow
def test_ray_actor_pool_gives_the_single_process_vectors(minilm_artifact, docs):
    from fxopt.ray import embed_file

    want = embed_texts(minilm_artifact, read_lines(docs), batch_size=16)
    got = embed_file(minilm_artifact, docs, actors=2, threads=1, batch_size=16, progress=False)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_bad_embed_requests_fail_before_any_work(minilm_artifact, docs, tmp_path, capsys):
    for argv, message in [
        ([str(minilm_artifact), str(docs), "--out", str(tmp_path / "e.csv")], ".npy or .parquet"),
        ([str(minilm_artifact), str(docs), "--out", "/nonexistent/dir/e.npy"], "does not exist"),
        ([str(minilm_artifact), str(docs), "--out", str(tmp_path / "e.npy"), "--actors", "3"], "need --ray"),
        ([str(minilm_artifact), str(docs), "--out", str(tmp_path / "e.npy"), "--batch-size", "0"], "at least 1"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["embed", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "missing.fxopt"), str(docs), "--out", str(tmp_path / "e.npy")]) == 1
    assert "no artifact" in capsys.readouterr().err
    assert main(["embed", str(minilm_artifact), str(tmp_path / "none.txt"), "--out", str(tmp_path / "e.npy")]) == 1
    assert "no input file" in capsys.readouterr().err


def test_embedder_needs_a_tokenizer_and_a_batch_that_fits(minilm_compiled, minilm_artifact, tmp_path):
    bare = fxopt.load(minilm_artifact)
    with pytest.raises(InputError, match="batches up to 256"):
        Embedder(minilm_artifact)(["a"] * 257)
    path = tmp_path / "bare.fxopt"
    import shutil
    shutil.copytree(minilm_artifact, path)
    import json
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop("tokenizer")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="without a tokenizer"):
        Embedder(path)
    assert bare.tokenizer is not None
