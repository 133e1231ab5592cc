"""Router families by name -> "module:Class", imported only when used (keeps torch out of light modules).

Adding a router family is one module under routers/ plus one line here.
"""

from __future__ import annotations

from routellm_batch._extras import import_registered

ROUTERS: dict[str, str] = {
    "default": "routellm_batch.routers.checkpoint:load_default_router",
    "random": "routellm_batch.routers.random_router:RandomRouter",
    "length": "routellm_batch.routers.length:LengthRouter",
    "mf": "routellm_batch.routers.mf:MatrixFactorizationRouter",
    "sw_ranking": "routellm_batch.routers.sw_ranking:SWRankingRouter",
    "bert": "routellm_batch.routers.bert:BertRouter",
    "causal_llm": "routellm_batch.routers.causal_llm:CausalLLMRouter",
    "stacked": "routellm_batch.routers.stacked:StackedRouter",
    "embed_ridge": "routellm_batch.routers.embed_ridge:EmbedRidgeRouter",
}


def resolve(kind: str):
    """The class (or factory) registered for `kind`."""
    return import_registered(ROUTERS, kind, unknown="router kind", needed_for=f"router {kind!r}")
