"""Embedders: wordllama (the shipped table), a Hugging Face encoder (tiny, built here), the OpenAI API
(the real SDK against a local HTTP server), text features, the embedding cache, specs."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest

from routellm_batch.routers.embedders import (
    CachingEmbedder,
    HFEncoderEmbedder,
    OpenAIEmbedder,
    TextFeaturesEmbedder,
    WordLlamaEmbedder,
    build_embedder,
    parse_embedder_arg,
    text_features,
)

TEXTS = [
    "Prove that there are infinitely many prime numbers.",
    "",
    "hello",
    "Ünïcödé and emoji 🙂 with\nnew lines\tand tabs",
    "Compute 12,345.6 + 7 = ? " * 50,
]


def test_wordllama_matches_the_wordllama_library_offline():
    import wordllama
    from pathlib import Path

    # stack-notes.md: the library's own loader needs a cache_dir holding tokenizers/ and no download.
    reference = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
    want = reference.embed(TEXTS)
    got = WordLlamaEmbedder().embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 256)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 sums in another order
    np.testing.assert_allclose(WordLlamaEmbedder(dim=64).embed(TEXTS), want[:, :64], rtol=1e-5, atol=1e-5)


TRICKY = [
    "", " ", "  two  spaces  ", "trailing ", " leading", "a\u2581b \u2581\u2581c", "\n\n x \t y",
    "tab\tsep  double", "日本語 テキスト", "emoji 🙂🙂 ok", "def f():\n    return  1", "x" * 3000,
    "100,000.50 dollars, 3/4 of it; 12 + 7 = 19?",
]


def test_wordllama_piecewise_token_ids_equal_the_whole_text_tokenizer():
    e = WordLlamaEmbedder(dim=64, max_cached_pieces=40)  # tiny cache: cleared between batches
    e._load()
    texts = TEXTS + TRICKY
    for batch in (texts, texts[::-1], texts[:3]):  # cold, then partly cached, then after clearing
        flat, lengths = e._token_ids(batch)
        want = [enc.ids for enc in e._tokenizer.encode_batch_fast(batch, add_special_tokens=False)]
        assert lengths.tolist() == [len(w) for w in want]
        assert flat.tolist() == [i for w in want for i in w]


def test_wordllama_piece_cache_is_bounded():
    e = WordLlamaEmbedder(dim=64, max_cached_pieces=5)
    first = e.embed(["alpha beta gamma delta"])
    assert len(e._pieces) == 4
    e.embed(["epsilon zeta eta"])  # 4 + 3 > 5: cleared, then holds this batch's pieces only
    assert sorted(e._pieces) == ["\u2581epsilon", "\u2581eta", "\u2581zeta"]
    np.testing.assert_array_equal(e.embed(["alpha beta gamma delta"]), first)


def test_wordllama_is_order_and_batch_independent():
    e = WordLlamaEmbedder(dim=64)
    whole = e.embed(TEXTS)
    one_by_one = np.concatenate([e.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-6)
    assert e.embed([]).shape == (0, 64)
    with pytest.raises(TypeError, match="not a single string"):
        e.embed("a string")
    with pytest.raises(TypeError, match="text 1 is int"):
        e.embed(["ok", 3])


def test_text_features_embedder_appends_scaled_counts():
    base = WordLlamaEmbedder(dim=64)
    e = TextFeaturesEmbedder(base)
    out = e.embed(["one two 3 and 45", ""])
    assert out.shape == (2, 64 + 6) and e.dim == 70
    np.testing.assert_allclose(out[:, :64], base.embed(["one two 3 and 45", ""]))
    # characters, words, distinct words, numbers, digits, lines
    np.testing.assert_allclose(np.expm1(out[0, 64:]), [16, 5, 5, 2, 3, 1], rtol=1e-5)
    np.testing.assert_allclose(out[1, 64:], 0.0)
    np.testing.assert_array_equal(text_features(["a\nb\nc"])[0, -1], np.float32(np.log1p(3)))


def test_specs_rebuild_the_same_embedder():
    e = TextFeaturesEmbedder(WordLlamaEmbedder(dim=128))
    spec = e.spec()
    assert spec == {"type": "text_features", "base": {"type": "wordllama", "config": "l2_supercat", "dim": 128}}
    rebuilt = build_embedder(json.loads(json.dumps(spec)))
    np.testing.assert_array_equal(rebuilt.embed(TEXTS), e.embed(TEXTS))
    assert parse_embedder_arg("wordllama:64") == {"type": "wordllama", "dim": 64}
    assert parse_embedder_arg("hf:/models/x+features") == {"type": "text_features", "base": {"type": "hf", "model": "/models/x"}}
    assert parse_embedder_arg("openai") == {"type": "openai", "model": "text-embedding-3-small"}
    with pytest.raises(ValueError, match="unknown embedder"):
        parse_embedder_arg("word2vec")
    with pytest.raises(ValueError, match="unknown embedder type"):
        build_embedder({"type": "nope"})


class _CountingEmbedder(WordLlamaEmbedder):
    def __init__(self):
        super().__init__(dim=64)
        self.seen: list[str] = []

    def embed(self, texts):
        self.seen.extend(texts)
        return super().embed(texts)


def test_caching_embedder_embeds_each_text_once_and_persists(tmp_path):
    inner = _CountingEmbedder()
    cache = CachingEmbedder(inner, tmp_path / "cache")
    first = cache.embed(TEXTS + TEXTS[:2])
    assert sorted(inner.seen) == sorted(TEXTS)  # duplicates embedded once
    np.testing.assert_allclose(first[: len(TEXTS)], inner.embed(TEXTS), atol=1e-6)
    inner.seen.clear()
    np.testing.assert_array_equal(cache.embed(TEXTS[::-1]), first[: len(TEXTS)][::-1])
    assert inner.seen == []
    # a new process (new wrapper) reads the disk cache
    again = _CountingEmbedder()
    np.testing.assert_array_equal(CachingEmbedder(again, tmp_path / "cache").embed(TEXTS), first[: len(TEXTS)])
    assert again.seen == []
    assert cache.spec() == inner.spec()
    # another embedder spec never reads these vectors
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


# --------------------------------------------------------------------------- Hugging Face encoder


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    corpus = [
        "prove the theorem about prime numbers",
        "say hello to my friend",
        "write a python function that sorts a list",
        "what is the capital of france",
    ] * 5
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    config = transformers.BertConfig(
        vocab_size=fast.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64,
    )
    import torch

    torch.manual_seed(0)
    model = transformers.BertModel(config)
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_hf_encoder_mean_pools_over_real_tokens_only(tiny_encoder_dir):
    import torch
    import transformers

    e = HFEncoderEmbedder(str(tiny_encoder_dir), device="cpu", batch_size=2, max_length=32)
    texts = ["prove the theorem", "say hello to my friend please now", "", "what is the capital of france"]
    got = e.embed(texts)
    assert got.shape == (4, 16) and got.dtype == np.float32 and e.dim == 16
    tok = transformers.AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = transformers.AutoModel.from_pretrained(tiny_encoder_dir).eval()
    for i, t in enumerate(texts):  # one text at a time: no padding at all
        with torch.no_grad():
            hidden = model(**tok([t], return_tensors="pt")).last_hidden_state[0]
        np.testing.assert_allclose(got[i], hidden.mean(0).numpy(), atol=1e-5)


def test_hf_encoder_travels_inside_a_router_checkpoint(tiny_encoder_dir, tmp_path):
    from routellm_batch.routers.checkpoint import load_checkpoint
    from routellm_batch.routers.mf import MatrixFactorizationRouter, MFWeights

    e = HFEncoderEmbedder(str(tiny_encoder_dir), max_length=32)
    rng = np.random.default_rng(0)
    router = MatrixFactorizationRouter(e, ["s", "w"], MFWeights(rng.normal(size=(2, 4)), rng.normal(size=(4, 16)), rng.normal(size=(1, 4))))
    router.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["embedder"]["model"] == "embedder" and config["embedder"]["in_checkpoint"] is True
    assert (tmp_path / "ckpt" / "embedder" / "config.json").is_file()
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    np.testing.assert_allclose(loaded.score(TEXTS), router.score(TEXTS), atol=1e-6)


# --------------------------------------------------------------------------- OpenAI API (local server)


def _fake_vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255.0 for b in digest[:dims]]


class _EmbeddingsServer:
    """Speaks POST /v1/embeddings; answers the first `fail_first` requests with 429."""

    def __init__(self, key: str, fail_first: int = 1, dims: int = 8):
        self.key, self.fail_first, self.dims = key, fail_first, dims
        self.requests: list[dict] = []  # authorized requests
        self.attempts = 0  # every request, authorized or not
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.attempts += 1
                if self.headers.get("Authorization") != f"Bearer {outer.key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                outer.requests.append(body)
                if len(outer.requests) <= outer.fail_first:
                    return self._send(429, {"error": {"message": "slow down", "type": "rate_limit_error"}})
                data = [
                    {"object": "embedding", "index": i, "embedding": _fake_vector(t, outer.dims)}
                    for i, t in enumerate(body["input"])
                ][::-1]  # out of order on purpose: the client must sort by index
                self._send(200, {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}})

            def _send(self, status, payload):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_embedder_batches_retries_and_keeps_order(monkeypatch):
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-test-not-a-real-key")
    with _EmbeddingsServer("sk-test-not-a-real-key", fail_first=1) as server:
        e = OpenAIEmbedder(
            "text-embedding-3-small", dimensions=8, base_url=server.url, api_key_env="TEST_EMBED_KEY",
            batch_size=2, retry_initial_wait=0.01,
        )
        got = e.embed(TEXTS)
    assert got.shape == (len(TEXTS), 8) and got.dtype == np.float32
    sent = [" " if not t.strip() else t for t in TEXTS]  # the API refuses empty inputs
    np.testing.assert_allclose(got, [_fake_vector(t, 8) for t in sent], atol=1e-6)
    # 3 batches of <= 2 texts, the first one sent twice (429, then success)
    assert [len(r["input"]) for r in server.requests] == [2, 2, 2, 1]
    assert all(r["model"] == "text-embedding-3-small" and r["dimensions"] == 8 for r in server.requests)
    assert "sk-test" not in json.dumps(e.spec())


def test_openai_embedder_needs_the_key_only_when_used(monkeypatch):
    monkeypatch.delenv("MISSING_EMBED_KEY", raising=False)
    e = build_embedder({"type": "openai", "model": "text-embedding-3-small", "api_key_env": "MISSING_EMBED_KEY"})
    assert e.dim == 1536  # building it needs no key and no network
    with pytest.raises(RuntimeError, match="MISSING_EMBED_KEY is not set"):
        e.embed(["hello"])


def test_openai_embedder_gives_up_on_a_terminal_error_without_echoing_the_key(monkeypatch):
    import openai

    monkeypatch.setenv("TEST_EMBED_KEY", "sk-wrong-key-123456")
    with _EmbeddingsServer("sk-right-key", fail_first=0) as server:
        e = OpenAIEmbedder(base_url=server.url, api_key_env="TEST_EMBED_KEY", dimensions=8, retry_initial_wait=0.01)
        with pytest.raises(openai.AuthenticationError) as info:
            e.embed(["hello"])
    assert "sk-wrong-key" not in str(info.value)
    assert server.attempts == 1  # a 401 is terminal: not retried


def test_train_command_hands_bert_to_train_bert(tiny_encoder_dir, tmp_path, capsys):
    import pandas as pd

    from routellm_batch.cli import main
    from routellm_batch.routers.checkpoint import load_checkpoint

    rows = [{"prompt": f"prove the theorem {i}" if i % 2 else f"say hello {i}", "big": 1.0, "small": float(i % 2 == 0)}
            for i in range(16)]
    pd.DataFrame(rows).to_parquet(tmp_path / "outcomes.parquet")
    args = ["train", "--router", "bert", "--data", str(tmp_path / "outcomes.parquet"), "--out", str(tmp_path / "bert"),
            "--strong-model", "big", "--weak-model", "small", "--option", "batch_size=8", "--option", "max_length=32"]
    assert main(args + ["--base-model", str(tiny_encoder_dir)]) == 0
    assert "trained bert on 16 battles" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "bert").score(["prove it", "hello"]).shape == (2,)
    assert main(args) == 2  # no --base-model
    assert "needs base_model" in capsys.readouterr().err
