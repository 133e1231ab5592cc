"""RouteLLM's released MF checkpoint layout loads into MatrixFactorizationRouter and scores as
RouteLLM's own forward does (random weights, small dims, a local embedder instead of OpenAI's)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from routellm_batch.routers.checkpoint import load_checkpoint  # noqa: E402
from routellm_batch.routers.embedders import WordLlamaEmbedder  # noqa: E402
from routellm_batch.routers.mf import MatrixFactorizationRouter  # noqa: E402
from routellm_batch.routers.routellm_compat import MODEL_IDS, canonical_model_name  # noqa: E402

PROMPTS = ["Prove Fermat's little theorem.", "hi", "", "Write a haiku about batch APIs.", "2+2=?" * 30]
DIM, TEXT_DIM = 16, 64


class RouteLLMMFModel(torch.nn.Module):
    """RouteLLM's MFModel (routellm/routers/matrix_factorization/model.py) minus its OpenAI client:
    the prompt embedding is passed in."""

    def __init__(self, dim: int, num_models: int = 64, text_dim: int = 1536) -> None:
        super().__init__()
        self.P = torch.nn.Embedding(num_models, dim)
        self.text_proj = torch.nn.Sequential(torch.nn.Linear(text_dim, dim, bias=False))
        self.classifier = torch.nn.Sequential(torch.nn.Linear(dim, 1, bias=False))

    def forward(self, model_id, prompt_embed):
        model_embed = torch.nn.functional.normalize(self.P(torch.tensor(model_id)), p=2, dim=1)
        return self.classifier(model_embed * self.text_proj(prompt_embed)).squeeze()

    @torch.no_grad()
    def pred_win_rate(self, model_a, model_b, prompt_embed):
        logits = self.forward([model_a, model_b], prompt_embed)
        return torch.sigmoid(logits[0] - logits[1]).item()


@pytest.fixture(scope="module")
def routellm_model():
    torch.manual_seed(0)
    return RouteLLMMFModel(DIM, text_dim=TEXT_DIM).eval()


@pytest.fixture(scope="module")
def embedder():
    return WordLlamaEmbedder(dim=TEXT_DIM)


def expected(model, embedder, strong: str, weak: str) -> np.ndarray:
    vecs = torch.from_numpy(embedder.embed(PROMPTS))
    return np.array([model.pred_win_rate(MODEL_IDS[strong], MODEL_IDS[weak], v) for v in vecs])


def test_hub_layout_folder_scores_as_routellm_forward(routellm_model, embedder, tmp_path):
    from safetensors.torch import save_file

    # What PyTorchModelHubMixin.save_pretrained writes: model.safetensors + config.json of init args
    save_file(routellm_model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"dim": DIM, "num_models": 64, "text_dim": TEXT_DIM}))
    router = MatrixFactorizationRouter.from_routellm(
        tmp_path, "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", embedder=embedder
    )
    assert (router.strong_model, router.weak_model) == ("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
    want = expected(routellm_model, embedder, "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
    np.testing.assert_allclose(router.score(PROMPTS), want, atol=1e-6)
    # any pair of RouteLLM's 64 models
    other = router.with_pair("claude-2.1", "llama-2-7b-chat")
    np.testing.assert_allclose(other.score(PROMPTS), expected(routellm_model, embedder, "claude-2.1", "llama-2-7b-chat"), atol=1e-6)
    # and it saves as a native checkpoint that loads back identically
    router.save(tmp_path / "native")
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "native").score(PROMPTS), router.score(PROMPTS))


def test_training_script_layout_pt_file_loads_too(routellm_model, embedder, tmp_path):
    # RouteLLM's MFModel_Train has plain Linear layers: keys without ".0", plus the frozen prompt table Q
    state = {k.replace(".0.", "."): v for k, v in routellm_model.state_dict().items()}
    state["Q.weight"] = torch.zeros(3, TEXT_DIM)
    torch.save(state, tmp_path / "mf.pt")
    router = MatrixFactorizationRouter.from_routellm(tmp_path / "mf.pt", embedder=embedder)
    want = expected(routellm_model, embedder, "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1")
    np.testing.assert_allclose(router.score(PROMPTS), want, atol=1e-6)


def test_routellm_loading_errors_are_clear(routellm_model, tmp_path):
    from safetensors.torch import save_file

    save_file(routellm_model.state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="expects 64-dim prompt embeddings; the embedder gives 128"):
        MatrixFactorizationRouter.from_routellm(tmp_path, embedder=WordLlamaEmbedder(dim=128))
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        canonical_model_name("gpt-9")
    save_file({"P.weight": torch.zeros(64, 4)}, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="not a RouteLLM MF checkpoint"):
        MatrixFactorizationRouter.from_routellm(tmp_path / "broken.safetensors", embedder=WordLlamaEmbedder(dim=64))
    with pytest.raises(FileNotFoundError):
        MatrixFactorizationRouter.from_routellm(tmp_path / "nothing-here")


def test_default_embedder_is_openai_text_embedding_3_small(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    big = RouteLLMMFModel(DIM, text_dim=1536)
    save_file(big.state_dict(), tmp_path / "model.safetensors")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    router = MatrixFactorizationRouter.from_routellm(tmp_path)  # no key needed to build it
    assert router.embedder.spec()["type"] == "openai" and router.embedder.spec()["model"] == "text-embedding-3-small"
    assert router.embedder.dim == 1536
