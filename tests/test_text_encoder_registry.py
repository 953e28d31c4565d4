"""The text-encoder registry: spec strings with options, validation naming every problem, generated help,
``--text-option``, the ``--text-length`` spelling, and options that reach the model and its checkpoint.

Nothing is downloaded: CLIP is a tiny random text tower saved locally (tests/hf_support.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lvseg.cli.main import app
from lvseg.data.synth import generate_synthetic_dataset
from lvseg.errors import LvsegError
from lvseg.models import create_model
from lvseg.text import (
    CLIPTextEncoder,
    LearnedTextEncoder,
    TextEncoder,
    TextEncoderKind,
    TextEncoderSpec,
    build_text_encoder,
    create_text_encoder,
    expected_specs,
    options_from_signature,
    parse_option_items,
    parse_text_encoder_spec,
    register_text_encoder,
    text_encoder_from_config,
    text_encoder_help,
    text_encoder_kinds,
    text_encoder_problems,
    unregister_text_encoder,
    with_text_options,
)
from lvseg.text.report_vector import ReportVectorEncoder
from lvseg.training.checkpoint import read_checkpoint_dict
from lvseg.training.fit import model_config_for
from lvseg.training.options import TrainConfig, check_train_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_support import save_tiny_clip

REPORTS = [
    "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
    "Unilateral pulmonary infection, one infected area, all left lung.",
    "No pulmonary infection.",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic_dataset(root, n=12, size=32, seed=0)
    return root


class ToyEncoder(ReportVectorEncoder):
    """A registered-in-the-test kind with one option of each type."""

    def __init__(
        self, scale: float = 1.0, strict: bool = False, width: int = 8, mode: str = "a", extra: dict | None = None
    ) -> None:
        super().__init__()
        self.scale, self.strict, self.width, self.mode = scale, strict, width, mode

    def config(self) -> dict:
        return {"type": "toy", "scale": self.scale, "strict": self.strict, "width": self.width, "mode": self.mode}


@pytest.fixture
def toy_kind() -> TextEncoderKind:
    kind = TextEncoderKind(
        name="toy",
        summary="a test kind",
        build=lambda spec, texts: ToyEncoder(**spec.options),
        from_config=lambda config, runtime: ToyEncoder(**{k: v for k, v in config.items() if k != "type"}),
        options=options_from_signature(
            ToyEncoder.__init__, skip=("extra",), choices={"mode": ("a", "b")}, minimum={"width": 1}
        ),
    )
    register_text_encoder(kind)
    yield kind
    unregister_text_encoder("toy")


# ------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "clip:openai/clip-vit-base-patch32,eof_padding=false",
            TextEncoderSpec("clip", "openai/clip-vit-base-patch32", {"eof_padding": False}),
        ),
        ("learned,dim=128,min_count=2", TextEncoderSpec("learned", None, {"dim": 128, "min_count": 2})),
        ("hf:bert-base-uncased,max_length=48", TextEncoderSpec("hf", "bert-base-uncased", {"max_length": 48})),
        (" learned , dim = 16 ", TextEncoderSpec("learned", None, {"dim": 16})),
        ("clip", TextEncoderSpec("clip", "openai/clip-vit-base-patch32", {})),
        ("minilm,cache=no", TextEncoderSpec("hf", "minilm", {"cache": False})),
        ("report-vector,unparsable=zero", TextEncoderSpec("report-vector", None, {"unparsable": "zero"})),
        # sources that hold ':', '=', '\\' or a comma not followed by NAME= stay whole
        (r"hf:C:\models\bert,max_length=4", TextEncoderSpec("hf", r"C:\models\bert", {"max_length": 4})),
        ("clip:https://example.org/clip?rev=main", TextEncoderSpec("clip", "https://example.org/clip?rev=main", {})),
        ("hf:/data/bert,v2,cache_dir=/tmp/a,b", TextEncoderSpec("hf", "/data/bert,v2", {"cache_dir": "/tmp/a,b"})),
    ],
)
def test_specs_parse_into_kind_source_and_typed_options(spec: str, expected: TextEncoderSpec) -> None:
    parsed = parse_text_encoder_spec(spec)
    assert parsed == expected
    assert parse_text_encoder_spec(parsed.format()) == parsed  # format() round-trips


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)]
)
def test_bool_words(text: str, value: bool) -> None:
    assert parse_text_encoder_spec(f"clip,eof_padding={text}").options == {"eof_padding": value}


def test_values_are_read_by_the_declared_type(toy_kind: TextEncoderKind) -> None:
    assert [(o.name, o.type, o.default) for o in toy_kind.options] == [
        ("scale", float, 1.0),
        ("strict", bool, False),
        ("width", int, 8),
        ("mode", str, "a"),
    ]
    parsed = parse_text_encoder_spec("toy,scale=2.5,strict=yes,width=3,mode=b")
    assert parsed.options == {"scale": 2.5, "strict": True, "width": 3, "mode": "b"}
    encoder = create_text_encoder("toy,scale=1e-3")
    assert isinstance(encoder, ToyEncoder) and encoder.scale == 1e-3
    assert isinstance(text_encoder_from_config(encoder.config()), ToyEncoder)
    problems = text_encoder_problems("toy,scale=nan,width=1.5,mode=c,strict=maybe")
    assert problems == [
        "option scale=nan: expected a number",
        "option width=1.5: expected an integer",
        "option mode=c: expected a or b",
        "option strict=maybe: expected true or false",
    ]


def test_unknown_option_and_bad_value_are_named_all_at_once() -> None:
    with pytest.raises(LvsegError) as error:
        parse_text_encoder_spec("clip:x,eof_pading=false,eof_padding=maybe,max_length=1")
    message = str(error.value)
    assert "unknown option 'eof_pading' for text encoder 'clip'; it takes eof_padding, max_length" in message
    assert "option eof_padding=maybe: expected true or false" in message
    assert "option max_length=1: expected a value >= 2" in message


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("bogus", f"unknown text encoder 'bogus'; expected {expected_specs()}"),
        ("hf:", "text encoder 'hf:' names no model"),
        ("learned:words", "text encoder 'learned' takes no ':<source>' part"),
        ("learned,dim", "text encoder 'learned': 'dim' is not NAME=VALUE"),
        ("learned,dim=4,dim=5", "option dim is given twice: dim=4 in 'learned,dim=4,dim=5' and dim=5 in"),
        ("report-vector,unparsable=maybe", "option unparsable=maybe: expected error or zero"),
        (
            "report-vector,max_length=3",
            "unknown option 'max_length' for text encoder 'report-vector'; it takes unparsable",
        ),
    ],
)
def test_bad_specs(spec: str, needle: str) -> None:
    with pytest.raises(LvsegError, match=re.escape(needle)):
        create_text_encoder(spec, texts=REPORTS)


def test_expected_specs_and_config_types_come_from_the_registry(toy_kind: TextEncoderKind) -> None:
    assert expected_specs() == (
        "'learned' or 'hf:<model id or local path>' or 'minilm' or 'clip[:<id or path>]' or 'report-vector' or 'toy'"
    )
    with pytest.raises(
        LvsegError,
        match=r"unknown type 'word2vec'; expected 'learned', 'hf', 'clip', "
        r"'report-vector' or 'toy'",
    ):
        text_encoder_from_config({"type": "word2vec"})


def test_registering_a_taken_name_is_refused(toy_kind: TextEncoderKind) -> None:
    with pytest.raises(LvsegError, match="already registered"):
        register_text_encoder(toy_kind)
    with pytest.raises(LvsegError, match="minilm"):
        register_text_encoder(
            TextEncoderKind(
                name="other",
                summary="",
                build=toy_kind.build,
                from_config=toy_kind.from_config,
                aliases={"minilm": ("x", "y")},
            )
        )


def test_an_option_the_command_line_cannot_give_must_be_skipped() -> None:
    with pytest.raises(TypeError, match="'extra'"):
        options_from_signature(ToyEncoder.__init__)


def test_python_keywords_merge_with_spec_options_and_conflicts_name_both() -> None:
    encoder = create_text_encoder("learned,dim=12", texts=REPORTS, max_length=7, context_layers=0)
    assert isinstance(encoder, LearnedTextEncoder)
    assert (encoder.feature_dim, encoder.max_length, encoder.context_layers) == (12, 7, 0)
    with pytest.raises(
        LvsegError,
        match=r"option dim is given twice: dim=12 in 'learned,dim=12' and dim=8 in the "
        r"keyword arguments",
    ):
        create_text_encoder("learned,dim=12", texts=REPORTS, dim=8)
    with pytest.raises(LvsegError, match=r"option dim=4\.5: expected an integer"):
        create_text_encoder("learned", texts=REPORTS, dim=4.5)


def test_the_models_text_length_must_agree_with_the_specs_max_length() -> None:
    assert build_text_encoder("learned,max_length=9", texts=REPORTS, max_length=9).max_length == 9
    assert build_text_encoder("learned,dim=4", texts=REPORTS, max_length=6).max_length == 6
    with pytest.raises(LvsegError, match=r"text_length 12 contradicts the text encoder option max_length=9"):
        build_text_encoder("learned,max_length=9", texts=REPORTS, max_length=12)
    with pytest.raises(LvsegError, match=r"text_length 12 contradicts the text encoder's max_length 1"):
        build_text_encoder("report-vector", max_length=12)
    model = create_model(
        "lvit", img_size=32, base_channels=8, text_encoder="learned,dim=8,context_layers=0", texts=REPORTS, text_len=6
    )
    assert model.config["text_encoder"]["dim"] == 8 and model.config["text_len"] == 6


# ------------------------------------------------------------------------------------------- --text-option


def test_text_option_items_and_merge() -> None:
    assert parse_option_items(["eof_padding=false", " max_length = 12"]) == {"eof_padding": "false", "max_length": "12"}
    with pytest.raises(LvsegError) as error:
        parse_option_items(["dim", "a=1", "a=2", "=3"])
    assert str(error.value) == (
        "--text-option 'dim' is not NAME=VALUE; --text-option a is given twice: a=1 and a=2; "
        "--text-option '=3' is not NAME=VALUE"
    )
    assert with_text_options("clip:/x", {}) == "clip:/x"
    merged = with_text_options("clip:/x,max_length=12", {"eof_padding": "no"})
    assert merged == "clip:/x,max_length=12,eof_padding=false"
    with pytest.raises(
        LvsegError,
        match=r"option eof_padding is given twice: eof_padding=true in "
        r"'clip:/x,eof_padding=true' and eof_padding=false in --text-option",
    ):
        with_text_options("clip:/x,eof_padding=true", {"eof_padding": "false"})
    with pytest.raises(LvsegError, match="cannot be part of a text encoder spec"):
        with_text_options("hf:/x", {"cache_dir": "/a,max_length=3"})


def test_train_config_text_options_reach_the_model_config(tmp_path: Path) -> None:
    config = TrainConfig(data=tmp_path, out=tmp_path / "run", model="reclmis", text_options={"eof_padding": "false"})
    assert model_config_for(config)["text_encoder"] == "clip:openai/clip-vit-base-patch32,eof_padding=false"
    config = TrainConfig(
        data=tmp_path,
        out=tmp_path / "run",
        text_encoder="learned,dim=8",
        text_options={"context_layers": "0"},
        text_length=10,
    )
    options = model_config_for(config)
    assert options["text_encoder"] == "learned,dim=8,context_layers=0" and options["text_len"] == 10
    with pytest.raises(LvsegError, match="--text-option: model 'c2fvl' has its own text front end"):
        model_config_for(TrainConfig(data=tmp_path, out=tmp_path, model="c2fvl", text_options={"dim": "8"}))


def test_check_train_config_lists_text_problems_with_the_others(tmp_path: Path) -> None:
    config = TrainConfig(
        data=tmp_path,
        out=tmp_path,
        batch_size=0,
        text_encoder="clip,eof_padding=maybe",
        text_options={"eof_padding": "true", "max_lenght": "3"},
    )
    with pytest.raises(LvsegError) as error:
        check_train_config(config)
    message = str(error.value)
    assert "--batch-size 0 must be >= 1" in message
    assert "--text-encoder: option eof_padding=maybe: expected true or false" in message
    assert "option eof_padding is given twice" in message
    assert "unknown option 'max_lenght' for text encoder 'clip'" in message
    with pytest.raises(LvsegError, match=r"--text-option: unknown option 'eof_padding' for text encoder 'learned'"):
        check_train_config(TrainConfig(data=tmp_path, out=tmp_path, text_options={"eof_padding": "false"}))


# ------------------------------------------------------------------------------------------- CLIP round trip


def test_clip_spec_with_eof_padding_off_is_recorded_and_rebuilt(clip_folder: Path) -> None:
    encoder = create_text_encoder(f"clip:{clip_folder},eof_padding=false,max_length=12")
    assert isinstance(encoder, CLIPTextEncoder) and encoder.eof_padding is False and encoder.max_length == 12
    short = encoder.token_ids(["abc"])[0].tolist()
    assert short[5:] == [0] * 7  # start, a, b, c, end: no " EOF XXX" appended
    config = encoder.config()
    assert config["eof_padding"] is False and config["max_length"] == 12
    rebuilt = text_encoder_from_config(config)
    assert isinstance(rebuilt, CLIPTextEncoder) and rebuilt.config() == config
    torch.testing.assert_close(rebuilt(["abc"]).tokens, encoder(["abc"]).tokens)
    model = create_model("reclmis", img_size=32, base_channels=8, text_encoder=f"clip:{clip_folder},eof_padding=false")
    assert model.config["text_encoder"]["eof_padding"] is False
    again = create_model("reclmis", **model.config)
    assert isinstance(again.text_encoder, TextEncoder) and again.text_encoder.eof_padding is False


def test_every_builtin_config_records_its_options(clip_folder: Path) -> None:
    learned = create_text_encoder("learned,dim=6,max_length=5,context_layers=2", texts=REPORTS)
    assert {k: learned.config()[k] for k in ("dim", "max_length", "context_layers")} == {
        "dim": 6,
        "max_length": 5,
        "context_layers": 2,
    }
    assert text_encoder_from_config(learned.config()).config() == learned.config()
    vector = create_text_encoder("report-vector,unparsable=zero")
    assert text_encoder_from_config(vector.config()).config() == {"type": "report-vector", "unparsable": "zero"}


# ------------------------------------------------------------------------------------------- command line


def _help() -> str:
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


def test_train_help_lists_every_kind_and_its_options() -> None:
    output = _help()
    for kind in text_encoder_kinds().values():
        assert kind.form in output, kind.name
        for option in kind.options:
            assert option.describe() in output, (kind.name, option.name)
    assert "minilm = hf:minilm" in output and "--text-option" in output
    assert "--text-length" in output and "--text-len " not in output  # the old spelling is hidden


def test_registry_help_follows_what_is_registered(toy_kind: TextEncoderKind) -> None:
    text = text_encoder_help()
    assert "toy: a test kind" in text and "scale=1.0, strict=false, width=8, mode=a|b" in text


def test_importing_the_text_package_does_not_import_transformers() -> None:
    code = "import sys, lvseg.text; lvseg.text.text_encoder_help(); assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_lvseg_train_with_text_options_and_the_old_text_len_flag(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--img-size",
            "32",
            "--base-channels",
            "8",
            "--max-epochs",
            "1",
            "--augment",
            "none",
            "--text-encoder",
            "learned,dim=16",
            "--text-option",
            "context_layers=0",
            "--text-option",
            "min_count=2",
            "--text-len",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    config = read_checkpoint_dict(out / "best.ckpt")["hyper_parameters"]["model_config"]
    encoder = config["text_encoder"]
    assert (encoder["type"], encoder["dim"], encoder["context_layers"]) == ("learned", 16, 0)
    assert encoder["max_length"] == 10
    assert config["text_len"] == 10
    from lvseg.inference import load_model

    assert load_model(out / "best.ckpt", device="cpu").text_encoder.config() == encoder


def test_lvseg_train_refuses_bad_text_options_before_any_work(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--text-encoder",
        "learned,dim=16",
        "--text-option",
        "dim=8",
        "--text-option",
        "eof_padding=false",
    ]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, LvsegError), result.output
    message = str(result.exception)
    assert "option dim is given twice: dim=16 in 'learned,dim=16' and dim=8 in --text-option" in message
    assert (
        "unknown option 'eof_padding' for text encoder 'learned'; it takes context_layers, dim, max_length, "
        "min_count" in message
    )
    assert not out.exists()
    result = CliRunner().invoke(
        app, ["train", "--data", str(data), "--out", str(out), "--text-length", "8", "--text-len", "9"]
    )
    assert isinstance(result.exception, LvsegError) and "--text-length 8 and --text-len 9 disagree" in str(
        result.exception
    )


def test_lvseg_train_passes_text_options_to_the_models_own_clip(data: Path, tmp_path: Path, clip_folder: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--model",
            "reclmis",
            "--img-size",
            "32",
            "--base-channels",
            "8",
            "--batch-size",
            "4",
            "--max-epochs",
            "1",
            "--augment",
            "none",
            "--text-encoder",
            f"clip:{clip_folder}",
            "--text-option",
            "eof_padding=false",
        ],
    )
    assert result.exit_code == 0, result.output
    encoder = read_checkpoint_dict(out / "best.ckpt")["hyper_parameters"]["model_config"]["text_encoder"]
    assert encoder["type"] == "clip" and encoder["eof_padding"] is False
    from lvseg.inference import load_model

    assert load_model(out / "best.ckpt", device="cpu").text_encoder.eof_padding is False


def test_info_takes_text_length_and_the_old_text_len() -> None:
    import json

    for flag in ("--text-length", "--text-len"):
        result = CliRunner().invoke(
            app,
            [
                "info",
                "--model",
                "lvit",
                "--img-size",
                "64",
                "--base-channels",
                "8",
                flag,
                "5",
                "--text-dim",
                "16",
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["options"]["text_len"] == 5


def test_frozen_encoder_config_reads_the_spec_with_its_options_and_aliases() -> None:
    from lvseg.text import frozen_encoder_config

    assert frozen_encoder_config("hf:bert-base-uncased,max_length=12", 12) == {
        "type": "hf",
        "name_or_path": "bert-base-uncased",
        "max_length": 12,
    }
    assert frozen_encoder_config("minilm", 9)["name_or_path"] == "minilm"
    with pytest.raises(LvsegError, match="contradicts"):
        frozen_encoder_config("hf:bert-base-uncased,max_length=48", 12)
    with pytest.raises(LvsegError, match="not a frozen encoder"):
        frozen_encoder_config("learned", 12)
