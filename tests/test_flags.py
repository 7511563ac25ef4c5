"""Yes / no settings from the command line: the string "false" must switch a setting off."""

import pytest

from lgesynth.flags import flag


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (1, True), (0, False), ("false", False),
                                             ("False", False), (" off ", False), ("no", False), ("true", True),
                                             ("YES", True), ("1", True), ("0", False)])
def test_flag_reads_bools_numbers_and_words(value, expected):
    assert flag(value) is expected


@pytest.mark.parametrize("value", ["flase", "", None, 2, 0.5, "auto"])
def test_flag_refuses_anything_else_by_name(value):
    with pytest.raises(ValueError, match="importance_weights must be true or false"):
        flag(value, "importance_weights")
