"""The Hugging Face router families (bert, causal_llm) on tiny models built from a config.

No model hub: every model has random weights from a small config and a tokenizer trained here on a
few sentences.
"""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from routellm_batch.routers.bert import BertRouter, battle_labels, strong_label_index, train_bert  # noqa: E402
from routellm_batch.routers.causal_llm import LABEL_TOKENS, CausalLLMRouter, PromptTemplate  # noqa: E402
from routellm_batch.routers.checkpoint import load_checkpoint  # noqa: E402
from routellm_batch.routers.hf_common import resolve_device  # noqa: E402

WORDS = (
    "hard easy prove the theorem about prime numbers say hello to my friend write a poem on the sea "
    "derive integral of a function explain quantum entanglement what is the capital of france "
    "translate this sentence into german summarize the article list three colors compute eigenvalues "
    "of the matrix tell me a joke please how are you today"
).split()
CORPUS = [" ".join(WORDS[i : i + 7]) for i in range(0, len(WORDS) - 7)] * 3
PROMPTS = [
    "hard prove the theorem about prime numbers",
    "easy say hello",
    "",
    "what is the capital of france",
    "derive integral of a function and explain quantum entanglement " * 3,
    "tell me a joke",
    "compute eigenvalues of the matrix {0: 1} please",
    "hi",
]
SYSTEM = "Predict the score of the answer from 1 to 5."
CLASSIFIER = "[Question]\n{question}\n\nPrediction:\n"
HEADER_TOKENS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is faster than two, and far faster on a machine shared with other jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _wordpiece_tokenizer(max_length: int):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def _bpe_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", *HEADER_TOKENS, *LABEL_TOKENS]
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<pad>"
    )


def _encoder_classifier(tmp_path_factory, name: str, num_labels: int, id2label=None, arch: str = "xlm-roberta"):
    """A plain HF classifier directory with random weights (seeded)."""
    directory = tmp_path_factory.mktemp(name)
    tokenizer = _wordpiece_tokenizer(max_length=48)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
        # Larger than the default 0.02 so that random logits differ visibly between prompts.
        initializer_range=0.5,
    )
    if id2label is not None:
        common["id2label"] = id2label
        common["label2id"] = {v: k for k, v in id2label.items()}
    torch.manual_seed(0)
    if arch == "xlm-roberta":
        model = transformers.XLMRobertaForSequenceClassification(transformers.XLMRobertaConfig(**common))
    else:
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**common))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory):
    return _encoder_classifier(tmp_path_factory, "xlmr3", num_labels=3)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A base encoder without a classification head, as `train_bert` gets it."""
    directory = tmp_path_factory.mktemp("encoder")
    tokenizer = _wordpiece_tokenizer(max_length=48)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1)
    transformers.XLMRobertaModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    tokenizer = _bpe_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """Absolute position embeddings: left padding must not shift a prompt's positions."""
    directory = tmp_path_factory.mktemp("gpt2")
    tokenizer = _bpe_tokenizer()
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _direct_softmax(model, tokenizer, text: str, max_length: int) -> np.ndarray:
    """One unpadded prompt through the classifier: the reference for the batched path."""
    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**enc).logits[0].double(), dim=-1).numpy()


def _set_head_bias(router: BertRouter, probabilities: list[float]) -> None:
    """Zero the last layer's weights so that softmax(logits) = softmax(bias) = `probabilities` for every prompt."""
    head = router.model.classifier
    last = head.out_proj if hasattr(head, "out_proj") else head
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.log(torch.tensor(probabilities, dtype=last.bias.dtype)))


# ---- bert ----------------------------------------------------------------------------------------


def test_bert_scores_are_float32_probabilities_in_prompt_order(xlmr_dir):
    router = BertRouter.from_pretrained(xlmr_dir, batch_size=3)
    scores = router.score(PROMPTS)
    assert scores.shape == (len(PROMPTS),) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.ptp(scores) > 1e-3, "random weights should still give prompt-dependent scores"

    permutation = np.random.default_rng(0).permutation(len(PROMPTS))
    permuted = router.score([PROMPTS[i] for i in permutation])
    np.testing.assert_allclose(permuted, scores[permutation], atol=1e-6)
    one_by_one = BertRouter.from_pretrained(xlmr_dir, batch_size=1).score(PROMPTS)
    np.testing.assert_allclose(one_by_one, scores, atol=1e-5)
    # Scoring on the CPU never initialises CUDA (forked Spark workers must not inherit a CUDA context).
    assert not torch.cuda.is_initialized()


def test_bert_three_labels_give_one_minus_tie_minus_weak(xlmr_dir):
    router = BertRouter.from_pretrained(xlmr_dir)
    assert router.strong_label == 0
    for prompt, score in zip(PROMPTS, router.score(PROMPTS), strict=True):
        p = _direct_softmax(router.model, router.tokenizer, prompt, router.max_length)
        assert score == pytest.approx(1.0 - p[1] - p[2], abs=1e-5)

    _set_head_bias(router, [0.2, 0.5, 0.3])
    np.testing.assert_allclose(router.score(PROMPTS), 0.2, atol=1e-6)
    np.testing.assert_allclose(router.label_probabilities(["x"]), [[0.2, 0.5, 0.3]], atol=1e-6)


def test_bert_two_labels_read_the_label_named_strong(tmp_path_factory):
    named = _encoder_classifier(tmp_path_factory, "named", 2, id2label={0: "weak", 1: "strong"}, arch="bert")
    router = BertRouter.from_pretrained(named)
    assert router.strong_label == 1
    _set_head_bias(router, [0.7, 0.3])
    np.testing.assert_allclose(router.score(PROMPTS), 0.3, atol=1e-6)

    unnamed = _encoder_classifier(tmp_path_factory, "unnamed", 2, arch="bert")
    router = BertRouter.from_pretrained(unnamed)
    assert router.strong_label == 0  # RouteLLM's convention: label 0 = strong wins
    _set_head_bias(router, [0.7, 0.3])
    np.testing.assert_allclose(router.score(PROMPTS), 0.7, atol=1e-6)


def test_strong_label_is_explicit_named_or_zero():
    assert strong_label_index({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, 3) == 0
    assert strong_label_index({0: "weak_wins", 1: "tie", 2: "strong_wins"}, 3) == 2
    assert strong_label_index({0: "a", 1: "b"}, 2, explicit=1) == 1
    with pytest.raises(ValueError, match="several strong labels"):
        strong_label_index({0: "strong", 1: "strong_tie"}, 2)
    with pytest.raises(ValueError, match="pass strong_label"):
        strong_label_index({i: f"LABEL_{i}" for i in range(4)}, 4)
    with pytest.raises(ValueError, match="out of range"):
        strong_label_index({}, 2, explicit=2)


def test_bert_checkpoint_round_trips_through_load_checkpoint(xlmr_dir, tmp_path):
    router = BertRouter.from_pretrained(xlmr_dir, max_length=24, batch_size=5)
    router.save(tmp_path / "ckpt")

    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["kind"] == "bert" and config["max_length"] == 24 and config["batch_size"] == 5
    assert json.loads((tmp_path / "ckpt" / "model" / "config.json").read_text())["model_type"] == "xlm-roberta"

    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert isinstance(loaded, BertRouter) and loaded.max_length == 24 and loaded.batch_size == 5
    np.testing.assert_array_equal(loaded.score(PROMPTS), router.score(PROMPTS))
    # A plain HF directory loads through `load` too (no router config.json "kind" there).
    plain = BertRouter.load(xlmr_dir)
    np.testing.assert_array_equal(plain.score(PROMPTS), BertRouter.from_pretrained(xlmr_dir).score(PROMPTS))


def test_bert_truncates_long_prompts_and_handles_edge_inputs(xlmr_dir):
    router = BertRouter.from_pretrained(xlmr_dir, max_length=16)
    long_prompt = " ".join(WORDS * 20)
    scores = router.score([long_prompt, long_prompt + " more words at the end"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6), "both are cut to the same first 16 tokens"
    empty = router.score([])
    assert empty.shape == (0,) and empty.dtype == np.float32
    with pytest.raises(TypeError, match="position 1"):
        router.score(["fine", None])


def test_router_device_is_validated_before_loading():
    with pytest.raises(ValueError, match="allowed"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")
    assert resolve_device("cpu").type == "cpu"


# ---- train_bert ----------------------------------------------------------------------------------

STRONG, WEAK = "gpt-4", "mixtral"
# Trivially separable: prompts drawn from a "hard" vocabulary are won by the strong model, prompts from
# an "easy" one by the weak model.
HARD_WORDS = "prove theorem prime integral derive eigenvalues matrix quantum entanglement function numbers compute"
EASY_WORDS = "hello friend joke colors poem sea today how are you please say"


def _sample_prompts(words: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = words.split()
    return [" ".join(rng.choice(vocab, size=int(rng.integers(3, 7)))) for _ in range(n)]


def _toy_battles() -> pd.DataFrame:
    """Both orientations of the pair, some ties, and rows of another pair that training must ignore."""
    rows = []
    for i, (hard, easy) in enumerate(zip(_sample_prompts(HARD_WORDS, 24, 0), _sample_prompts(EASY_WORDS, 24, 1))):
        a_is_strong = i % 2 == 0
        model_a, model_b = (STRONG, WEAK) if a_is_strong else (WEAK, STRONG)
        rows.append((hard, model_a, model_b, "model_a" if a_is_strong else "model_b"))
        rows.append((easy, model_a, model_b, "model_b" if a_is_strong else "model_a"))
        if i % 6 == 0:
            rows.append((f"{hard} {easy}", model_a, model_b, "tie" if i % 12 else "tie (bothbad)"))
        rows.append((easy, "other-a", "other-b", "model_a"))
    return pd.DataFrame(rows, columns=["prompt", "model_a", "model_b", "winner"])


def test_battle_labels_keep_the_pair_in_either_orientation():
    battles = _toy_battles()
    rows, strong, weak = battle_labels(battles, STRONG, WEAK)
    assert (strong, weak) == (STRONG, WEAK)
    assert len(rows) == ((battles.model_a == STRONG) | (battles.model_b == STRONG)).sum()
    assert set(rows.loc[rows.prompt.isin(_sample_prompts(HARD_WORDS, 24, 0)), "label"]) == {0}
    assert set(rows.loc[rows.prompt.isin(_sample_prompts(EASY_WORDS, 24, 1)), "label"]) == {2}
    assert (rows.label == 1).sum() == battles.winner.str.startswith("tie").sum() == 4

    pair_only = battles[battles.model_a != "other-a"]
    assert battle_labels(pair_only)[1:] == (STRONG, WEAK)  # inferred: more wins -> strong
    reversed_names = pair_only.assign(model_a=pair_only.model_b, model_b=pair_only.model_a)
    flipped = reversed_names.assign(winner=pair_only.winner.replace({"model_a": "model_b", "model_b": "model_a"}))
    assert battle_labels(flipped)[0].equals(battle_labels(pair_only)[0])
    assert battle_labels(pair_only, weak_model=WEAK)[1:] == (STRONG, WEAK)

    with pytest.raises(ValueError, match="name the pair"):
        battle_labels(battles)
    bad = battles.copy()
    bad.loc[3, "winner"] = "draw"
    with pytest.raises(ValueError, match="row 3: winner 'draw'"):
        battle_labels(bad, STRONG, WEAK)
    with pytest.raises(ValueError, match="lacks column"):
        battle_labels(battles.drop(columns="winner"), STRONG, WEAK)
    with pytest.raises(ValueError, match="no row of the pair"):
        battle_labels(battles, STRONG, "claude")


def test_train_bert_is_deterministic_and_learns_a_separable_toy_set(encoder_dir, tmp_path):
    battles = _toy_battles()
    options = dict(seed=7, strong_model=STRONG, weak_model=WEAK, epochs=15, batch_size=8, lr=3e-3, max_length=32)
    before = torch.random.get_rng_state()
    first = train_bert(battles, tmp_path / "a", str(encoder_dir), **options)
    assert torch.equal(torch.random.get_rng_state(), before), "training must not move the global RNG"
    second = train_bert(battles, tmp_path / "b", str(encoder_dir), **options)

    # Unseen prompts from the same two vocabularies.
    held_out = _sample_prompts(HARD_WORDS, 10, 100) + _sample_prompts(EASY_WORDS, 10, 101)
    scores = first.score(held_out)
    np.testing.assert_array_equal(scores, second.score(held_out))
    hard, easy = scores[:10], scores[10:]
    assert hard.min() > easy.max(), (hard, easy)
    assert hard.mean() - easy.mean() > 0.5, (hard, easy)

    assert (first.strong_model, first.weak_model, first.strong_label) == (STRONG, WEAK, 0)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["kind"] == "bert" and config["strong_model"] == STRONG and config["weak_model"] == WEAK
    assert first.model.config.id2label == {0: "strong", 1: "tie", 2: "weak"}
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "a").score(held_out), scores)


# ---- causal_llm ----------------------------------------------------------------------------------


def _causal_router(llama_dir, **options) -> CausalLLMRouter:
    return CausalLLMRouter.from_pretrained(
        llama_dir, system_message=SYSTEM, classifier_message=CLASSIFIER, max_length=128, **options
    )


def test_causal_llm_prompt_follows_routellm_template(llama_dir):
    router = _causal_router(llama_dir)
    text = router.format_prompt("  What is {x}?  ")
    assert text == (
        "<|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n[Question]\n  What is {x}?  \n\nPrediction:<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    no_system = PromptTemplate().render("", "q")
    assert no_system.startswith("<|start_header_id|>user")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_llm_score_is_one_minus_p4_minus_p5_of_the_next_label_token(arch, request):
    model_dir = request.getfixturevalue(f"{arch}_dir")
    router = _causal_router(model_dir, batch_size=3)
    scores = router.score(PROMPTS)
    assert scores.shape == (len(PROMPTS),) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1)) and np.ptp(scores) > 1e-3

    label_ids = [router.tokenizer.convert_tokens_to_ids(t) for t in LABEL_TOKENS]
    for prompt, score in zip(PROMPTS, scores, strict=True):
        # Reference: the unpadded prompt alone, full logits, label tokens picked out afterwards.
        enc = router.tokenizer(router.format_prompt(prompt), return_tensors="pt")
        with torch.no_grad():
            logits = router.model(**enc).logits[0, -1].double()
        p = torch.softmax(logits[label_ids], dim=-1).numpy()
        assert score == pytest.approx(1.0 - p[3] - p[4], abs=2e-5)

    permutation = np.random.default_rng(1).permutation(len(PROMPTS))
    np.testing.assert_allclose(router.score([PROMPTS[i] for i in permutation]), scores[permutation], atol=2e-5)
    lenient = _causal_router(model_dir, score_threshold=5).score(PROMPTS)
    assert np.all(lenient >= scores)  # 1 - p(5) >= 1 - p(4) - p(5)


def test_causal_llm_truncates_on_the_left_keeping_the_cue(llama_dir):
    router = _causal_router(llama_dir)
    router.max_length = 40
    body = "hello friend " * 100 + "tell me a joke"
    first, second = router.score(["prove the theorem " + body, "say hello " + body])
    assert np.isfinite(first) and first == second, "only the beginning differs, and it is cut off"
    ids = router.tokenizer(router.format_prompt(body), truncation=True, max_length=40)["input_ids"]
    tokens = router.tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == 40 and tokens[0] == "<|begin_of_text|>" and tokens[-3] == "<|end_header_id|>"


def test_causal_llm_checkpoint_round_trips_through_load_checkpoint(llama_dir, tmp_path):
    router = _causal_router(llama_dir, batch_size=4, strong_model=STRONG, weak_model=WEAK)
    router.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["kind"] == "causal_llm" and config["label_tokens"] == list(LABEL_TOKENS)
    assert config["score_threshold"] == 4 and config["classifier_message"] == CLASSIFIER

    loaded = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, CausalLLMRouter) and loaded.format_prompt("q") == router.format_prompt("q")
    np.testing.assert_array_equal(loaded.score(PROMPTS), router.score(PROMPTS))


def test_causal_llm_reads_routellm_message_files_or_says_what_is_missing(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="system_ft_v5.txt"):
        CausalLLMRouter.from_pretrained(llama_dir)
    (llama_dir / "system_ft_v5.txt").write_text(SYSTEM)
    (llama_dir / "classifier_ft_v5.txt").write_text(CLASSIFIER)
    try:
        router = CausalLLMRouter.from_pretrained(llama_dir)
        assert router.system_message == SYSTEM and router.classifier_message == CLASSIFIER
    finally:
        (llama_dir / "system_ft_v5.txt").unlink()
        (llama_dir / "classifier_ft_v5.txt").unlink()


def test_causal_llm_rejects_labels_the_tokenizer_lacks(llama_dir):
    with pytest.raises(ValueError, match=r"label token '\[\[6\]\]'"):
        _causal_router(llama_dir, label_tokens=[*LABEL_TOKENS[1:], "[[6]]"])
    with pytest.raises(ValueError, match="score_threshold"):
        _causal_router(llama_dir, score_threshold=1)


# ---- bert in `learn` ----------------------------------------------------------------------------------
def test_learn_offers_bert_only_with_a_local_encoder():
    from routellm_batch.config import LearnSettings

    with pytest.raises(ValueError, match="set 'encoder'"):
        LearnSettings(reference={"column": "gold"}, routers=["embed_ridge", "bert"])
    assert LearnSettings(reference={"column": "gold"}, routers=["bert"], encoder="models/enc").encoder == "models/enc"


def test_learn_fine_tunes_bert_from_a_local_encoder_in_every_fold(encoder_dir):
    from routellm_batch.evaluation import PairedOutcomes
    from routellm_batch.stages.learn import LEARN_FAMILIES, nested_out_of_fold_scores

    hard, easy = _sample_prompts(HARD_WORDS, 24, 200), _sample_prompts(EASY_WORDS, 24, 201)
    # the strong model wins the chemistry prompts, the weak one the others
    outcomes = PairedOutcomes(tuple(hard + easy), np.r_[np.ones(24), np.zeros(24)], np.r_[np.zeros(24), np.ones(24)],
                              STRONG, WEAK)
    options = {"bert": {"base_model": str(encoder_dir), "epochs": 15, "batch_size": 8, "lr": 3e-3, "max_length": 32}}
    scores, picked = nested_out_of_fold_scores(outcomes, ["bert"], folds=2, inner_folds=2, seed=0, options=options)
    assert "bert" in LEARN_FAMILIES and picked == ["bert", "bert"]
    assert scores.shape == (48,) and ((scores >= 0) & (scores <= 1)).all()
    assert np.unique(scores).size > 40  # a fine-tuned classifier per fold (whether it learns: the train_bert test)
