"""The ``learned`` text encoder, its tokenizer/vocabulary and the spec/config factory."""

from __future__ import annotations

import json

import pytest
import torch

from lvseg.errors import LvsegError
from lvseg.text import LearnedTextEncoder, TextFeatures, create_text_encoder, text_encoder_from_config
from lvseg.text.tokenize import PAD_ID, UNK_ID, build_vocabulary, tokenize

REPORTS = [
    "Bilateral pulmonary infection, two infected areas.",
    "Unilateral pulmonary infection, one infected area.",
    "Bilateral pulmonary infection, three infected areas, middle left lung.",
]


def test_tokenize_lowercases_and_splits_punctuation() -> None:
    assert tokenize("Bilateral Infection, two AREAS.") == ["bilateral", "infection", ",", "two", "areas", "."]
    assert tokenize("x-ray 2.5cm; don't") == ["x-ray", "2.5cm", ";", "don't"]


def test_vocabulary_specials_first_min_count_and_order_independent() -> None:
    vocab = build_vocabulary(REPORTS)
    assert vocab[:2] == ["<pad>", "<unk>"]
    assert len(vocab) == len(set(vocab))
    assert {"bilateral", "pulmonary", ",", "."} <= set(vocab)
    assert vocab == build_vocabulary(list(reversed(REPORTS)))
    frequent = build_vocabulary(REPORTS, min_count=3)
    assert set(frequent[2:]) == {"pulmonary", "infection", ",", "infected", "."}


def test_shapes_and_padding_mask() -> None:
    encoder = create_text_encoder("learned", texts=REPORTS)
    assert encoder.trainable is True
    assert (encoder.feature_dim, encoder.max_length) == (64, 32)
    out = encoder(["Two infected areas.", REPORTS[2]])
    assert isinstance(out, TextFeatures)
    assert out.tokens.shape == (2, 32, 64)
    assert out.mask.shape == (2, 32) and out.mask.dtype == torch.bool
    assert out.pooled.shape == (2, 64)
    assert out.mask[0].tolist() == [True] * 4 + [False] * 28
    assert int(out.mask[1].sum()) == len(tokenize(REPORTS[2]))
    assert torch.all(out.tokens[~out.mask] == 0)
    assert torch.all(out.tokens[out.mask].abs().sum(-1) > 0)
    expected = out.tokens[0, :4].mean(0)
    torch.testing.assert_close(out.pooled[0], expected)


def test_truncation_to_max_length() -> None:
    encoder = LearnedTextEncoder.from_texts(REPORTS, dim=8, max_length=5)
    out = encoder([REPORTS[2]])
    assert out.tokens.shape == (1, 5, 8)
    assert out.mask.all()


def test_unknown_words_map_to_unk_and_empty_text_has_one_token() -> None:
    encoder = LearnedTextEncoder.from_texts(REPORTS, dim=8, max_length=6)
    ids = encoder.encode_ids(["zebra bilateral quokka", ""])
    assert ids[0, :3].tolist() == [UNK_ID, encoder.vocab.index("bilateral"), UNK_ID]
    assert ids[0, 3:].tolist() == [PAD_ID] * 3
    assert ids[1].tolist() == [UNK_ID] + [PAD_ID] * 5
    out = encoder(["zebra", "quokka"])
    torch.testing.assert_close(out.tokens[0], out.tokens[1])


def test_config_round_trip_gives_identical_features() -> None:
    encoder = LearnedTextEncoder.from_texts(REPORTS, dim=16, max_length=12)
    config = json.loads(json.dumps(encoder.config()))  # JSON-able, as stored in checkpoint hparams
    assert config["type"] == "learned" and config["dim"] == 16 and config["max_length"] == 12
    rebuilt = text_encoder_from_config(config)
    assert isinstance(rebuilt, LearnedTextEncoder) and rebuilt.vocab == encoder.vocab
    before = rebuilt(REPORTS).tokens
    assert not torch.allclose(before, encoder(REPORTS).tokens)  # fresh weights differ...
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    a, b = encoder(REPORTS + ["unseen words"]), rebuilt(REPORTS + ["unseen words"])
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=0)  # ...until the weights are loaded
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=0)
    assert torch.equal(a.mask, b.mask)


def test_gradients_reach_word_and_position_embeddings() -> None:
    encoder = LearnedTextEncoder.from_texts(REPORTS, dim=8, max_length=10)
    out = encoder(["two infected areas"])
    (out.tokens.sum() + out.pooled.sum()).backward()
    word_grad = encoder.word_embedding.weight.grad
    assert word_grad is not None and encoder.position_embedding.weight.grad is not None
    for word in ("two", "infected", "areas"):
        assert word_grad[encoder.vocab.index(word)].abs().sum() > 0
    assert word_grad[encoder.vocab.index("bilateral")].abs().sum() == 0
    assert word_grad[PAD_ID].abs().sum() == 0
    assert encoder.position_embedding.weight.grad[:3].abs().sum() > 0


def test_a_bare_string_is_rejected() -> None:
    encoder = LearnedTextEncoder.from_texts(REPORTS, dim=4, max_length=4)
    with pytest.raises(TypeError):
        encoder("one report")  # type: ignore[arg-type]


def test_factory_errors_are_lvseg_errors() -> None:
    with pytest.raises(LvsegError, match="training reports"):
        create_text_encoder("learned")
    with pytest.raises(LvsegError, match="training reports"):
        create_text_encoder("learned", texts=[])
    with pytest.raises(LvsegError, match=r"'learned' or 'hf:<model id or local path>'"):
        create_text_encoder("bert")
    with pytest.raises(LvsegError, match="names no model"):
        create_text_encoder("hf:")
    with pytest.raises(LvsegError, match="unknown type"):
        text_encoder_from_config({"type": "word2vec"})
    with pytest.raises(LvsegError, match="'vocab'"):
        text_encoder_from_config({"type": "learned", "dim": 4, "max_length": 4})
    with pytest.raises(LvsegError, match="must start with"):
        LearnedTextEncoder(["a", "b"])


def test_factory_passes_options() -> None:
    encoder = create_text_encoder("learned", texts=REPORTS, dim=12, max_length=7, min_count=3)
    assert isinstance(encoder, LearnedTextEncoder)
    assert (encoder.feature_dim, encoder.max_length, len(encoder.vocab)) == (12, 7, 7)


def test_context_layer_makes_a_token_depend_on_its_sentence():
    from lvseg.text import create_text_encoder, text_encoder_from_config

    texts = ["upper left lung.", "upper right lung."]
    contextual = create_text_encoder("learned", texts=texts, context_layers=1)
    bag_of_words = create_text_encoder("learned", texts=texts, context_layers=0)
    with torch.no_grad():
        upper_ctx = contextual(texts).tokens[:, 0]  # the token "upper" in both reports
        upper_plain = bag_of_words(texts).tokens[:, 0]
    assert not torch.allclose(upper_ctx[0], upper_ctx[1], atol=1e-4)
    assert torch.allclose(upper_plain[0], upper_plain[1])
    rebuilt = text_encoder_from_config(contextual.config())
    rebuilt.load_state_dict(contextual.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(texts).tokens, contextual(texts).tokens)
