import pytest

from detnas.model.space import PRESETS, ArchError, arch_to_str, get_space, parse_arch, to_arch

SMALL, LARGE = get_space("small"), get_space("large")


def test_spaces_match_spec():
    assert (SMALL.num_blocks, SMALL.stem_channels, SMALL.stage_channels) == (20, 16, (64, 160, 320, 640))
    assert (LARGE.num_blocks, LARGE.stem_channels, LARGE.stage_channels) == (40, 48, (96, 240, 480, 960))
    assert SMALL.size == 4**20
    strides = [b.stride for b in SMALL.blocks()]
    assert strides.count(2) == 4 and [strides[i] for i in (0, 4, 8, 16)] == [2, 2, 2, 2]
    assert SMALL.stage_last_block() == [3, 7, 15, 19]


def test_widened_large_is_detnasnet_3_8g():
    wide = get_space("large", 1.8)
    assert wide.stem_channels == 72
    assert wide.stage_channels == (172, 432, 864, 1728)
    assert wide.last_channels == 1728
    assert get_space("large", 1.0) is LARGE


@pytest.mark.parametrize(
    "text",
    ["21202112331300313132", " 21202112331300313132 ", "[2,1,2,0,2,1,1,2,3,3,1,3,0,0,3,1,3,1,3,2]", "detnas-coco-fpn-300m"],
)
def test_parse_accepts_digits_json_and_presets(text):
    assert arch_to_str(parse_arch(text, SMALL)) == "21202112331300313132"


def test_parse_without_space_infers_from_length():
    assert len(parse_arch("0" * 40)) == 40
    assert parse_arch("detnasnet-1.3g") == to_arch(PRESETS["detnasnet-1.3g"].arch)


@pytest.mark.parametrize(
    "text, message",
    [
        ("0000", "has 4 blocks but the small space has 20"),
        ("0" * 19 + "4", "digit(s) 4"),
        ("[0, 1, 5" + ", 0" * 17 + "]", "block 2 has choice 5"),
        ("[0, 1", "not a valid JSON list"),
        ('{"a": 1}', "not an architecture"),
        ("resnet50", "not an architecture"),
        ("[" + ", ".join(["true"] * 20) + "]", "block 0 has choice True"),
        ("0" * 40, "has 40 blocks but the small space has 20"),
        ("detnasnet-1.3g", "belongs to the large space"),
    ],
)
def test_parse_rejects_with_a_clear_message(text, message):
    with pytest.raises(ArchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_arch(text, SMALL)


def test_unknown_space_and_bad_width():
    with pytest.raises(ArchError, match="unknown search space 'medium'"):
        get_space("medium")
    with pytest.raises(ArchError, match="positive"):
        get_space("small", 0.0)


def test_presets_are_valid_for_their_space():
    assert len(PRESETS) == 8
    for p in PRESETS.values():
        assert len(parse_arch(p.arch, p.search_space())) == p.search_space().num_blocks
    assert PRESETS["shufflenetv2-20"].arch == "0" * 20 and PRESETS["shufflenetv2-40"].arch == "0" * 40
    # the baseline the pipeline retrains and the search scores beside its winner is that preset
    for name, space in (("shufflenetv2-20", SMALL), ("shufflenetv2-40", LARGE)):
        assert arch_to_str(space.baseline) == PRESETS[name].arch and space.widen(1.5).baseline == space.baseline
