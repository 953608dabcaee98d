"""export.py: ONNX export of bi-encoders and cross-encoders where sentence-transformers looks for it, equal
to torch within 1e-4 (fp32), int8 quantisation, the CLI, and the real MiniLM against sentence-transformers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'densetune[onnx]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'densetune[onnx]')")

from tiny_models import save_tiny_bert  # noqa: E402

from densetune.cli import main as cli  # noqa: E402
from densetune.errors import DensetuneError  # noqa: E402
from densetune.export import export_onnx, load_onnx_biencoder, load_onnx_crossencoder  # noqa: E402

TEXTS = ["short", "a somewhat longer text about retrieval and negatives", "x y z", "one more " * 9]


@pytest.fixture(scope="module")
def tiny_bi(tmp_path_factory, minilm_path) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("bi"), minilm_path, dropout=0.0)


@pytest.fixture(scope="module")
def tiny_cross(tmp_path_factory, minilm_path) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("cross"), minilm_path, num_labels=1, head="classifier")


def test_bi_encoder_fp32_and_int8(tiny_bi, tmp_path):
    from densetune.models.biencoder import BiEncoder

    out = tmp_path / "exported"
    result = export_onnx(tiny_bi, out, quantize="int8")
    assert result.kind == "bi-encoder"
    assert (out / "onnx" / "model.onnx").is_file() and (out / "onnx" / "model_qint8.onnx").is_file()
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()  # the folder is copied
    assert result.max_diff["fp32"] < 1e-4
    torch_model = BiEncoder.from_pretrained(tiny_bi)
    onnx_model = load_onnx_biencoder(out)
    # other batch sizes and lengths than the export traced: the axes are dynamic
    for batch in (1, 3):
        for is_query in (True, False):
            got = onnx_model.encode_texts(TEXTS, is_query=is_query, batch_size=batch)
            want = torch_model.encode_texts(TEXTS, is_query=is_query, batch_size=batch)
            assert got.shape == want.shape and float((got - want).abs().max()) < 1e-4
    int8 = load_onnx_biencoder(out, "onnx/model_qint8.onnx").encode_texts(TEXTS, is_query=False)
    want = torch_model.encode_texts(TEXTS, is_query=False)
    assert float((int8 - want).abs().max()) < 0.5  # quantised: close, not equal
    cos = torch.nn.functional.cosine_similarity(int8, want)
    assert float(cos.min()) > 0.9


def test_cross_encoder_logits_equal_torch(tiny_cross, tmp_path):
    from densetune.models.crossencoder import CrossEncoder

    out = tmp_path / "exported"
    result = export_onnx(tiny_cross, out)
    assert result.kind == "cross-encoder" and result.max_diff["fp32"] < 1e-4
    assert not (out / "onnx" / "model_qint8.onnx").exists()
    pairs = (TEXTS, TEXTS[::-1])
    want = CrossEncoder.from_pretrained(tiny_cross).score_pairs(*pairs, batch_size=2)
    got = load_onnx_crossencoder(out).score_pairs(*pairs, batch_size=3)
    assert float((got - want).abs().max()) < 1e-4


def test_export_in_place_keeps_the_folder(tiny_bi, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_bi, folder)
    before = sorted(p.name for p in folder.iterdir())
    export_onnx(folder, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, "onnx"])


def test_errors(tmp_path, tiny_bi):
    with pytest.raises(DensetuneError, match="quantization"):
        export_onnx(tiny_bi, tmp_path / "o", quantize="int4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DensetuneError, match="config.json"):
        export_onnx(tmp_path / "empty", tmp_path / "o")
    (tmp_path / "towers" / "query_encoder").mkdir(parents=True)
    with pytest.raises(DensetuneError, match="separate query and passage towers"):
        export_onnx(tmp_path / "towers", tmp_path / "o")


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = cli(["export", str(tmp_path / "missing"), "--to", "onnx", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "model folder not found" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_minilm_onnx_file_alone_equals_sentence_transformers(minilm_path, tmp_path, capsys):
    """The exported file run by onnxruntime directly, with the folder's own pooling settings applied by
    hand, equals sentence-transformers' torch embeddings: what backend="onnx" computes through Optimum."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    out = tmp_path / "minilm"
    assert cli(["export", minilm_path, "--to", "onnx", "--out", str(out)]) == 0
    assert "max |onnx - torch|" in capsys.readouterr().out
    session = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]  # what Optimum feeds
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    pooling = json.loads((Path(minilm_path) / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="np")
    hidden = session.run(None, {n: enc[n].astype(np.int64) for n in names})[0]
    mask = enc["attention_mask"][:, :, None].astype(np.float32)
    emb = (hidden * mask).sum(1) / mask.sum(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    want = SentenceTransformer(minilm_path, device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert np.abs(emb - want).max() < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("optimum") is None,
    reason="SentenceTransformer(backend='onnx') needs optimum[onnxruntime], which is not installed "
    "(optimum-onnx 0.1 requires transformers<4.58)",
)
def test_real_minilm_loads_with_sentence_transformers_onnx_backend(minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "minilm"
    export_onnx(minilm_path, out)
    got = SentenceTransformer(str(out), backend="onnx", device="cpu").encode(TEXTS)
    want = SentenceTransformer(minilm_path, device="cpu").encode(TEXTS)
    assert np.abs(got - want).max() < 1e-4
