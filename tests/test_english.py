"""vlkit.english: the one set of English helpers, pinned to what each module's own copy wrote before.

The world (captions), the template teacher (answers), the ScienceQA generator and the judge each
had their own pluralizer, number words, articles and lists. The expected strings below were
recorded from those old functions (vlkit/world.py ``plural``, vlkit/teacher.py ``pluralize`` /
``counted`` / ``_a`` / ``_join`` / ``where``, vlkit/benchmarks/scienceqa.py ``_plural``), so the
merged helpers provably write the same data.
"""
import pytest

from vlkit import english as E
from vlkit.world import COLORS, SHAPES, WorldConfig

WORLD_NOUNS = {  # old world.plural(noun, n != 1), teacher.pluralize(noun) and (shapes) scienceqa._plural
    "circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
    "cross": "crosses", "shape": "shapes", "object": "objects",
}

CATEGORIES = {  # teacher.pluralize: every colour + shape category of the world, and colour + object
    "red circle": "red circles", "red square": "red squares", "red triangle": "red triangles",
    "red diamond": "red diamonds", "red cross": "red crosses", "orange circle": "orange circles",
    "orange square": "orange squares", "orange triangle": "orange triangles", "orange diamond": "orange diamonds",
    "orange cross": "orange crosses", "yellow circle": "yellow circles", "yellow square": "yellow squares",
    "yellow triangle": "yellow triangles", "yellow diamond": "yellow diamonds", "yellow cross": "yellow crosses",
    "green circle": "green circles", "green square": "green squares", "green triangle": "green triangles",
    "green diamond": "green diamonds", "green cross": "green crosses", "cyan circle": "cyan circles",
    "cyan square": "cyan squares", "cyan triangle": "cyan triangles", "cyan diamond": "cyan diamonds",
    "cyan cross": "cyan crosses", "blue circle": "blue circles", "blue square": "blue squares",
    "blue triangle": "blue triangles", "blue diamond": "blue diamonds", "blue cross": "blue crosses",
    "purple circle": "purple circles", "purple square": "purple squares", "purple triangle": "purple triangles",
    "purple diamond": "purple diamonds", "purple cross": "purple crosses", "white circle": "white circles",
    "white square": "white squares", "white triangle": "white triangles", "white diamond": "white diamonds",
    "white cross": "white crosses", "red object": "red objects", "orange object": "orange objects",
    "yellow object": "yellow objects", "green object": "green objects", "cyan object": "cyan objects",
    "blue object": "blue objects", "purple object": "purple objects", "white object": "white objects",
}

OTHER_NOUNS = {  # teacher.pluralize on COCO-style categories: -s/-x/-z/-ch/-sh, consonant + y, vowel + y
    "traffic light": "traffic lights", "bus": "buses", "glass": "glasses", "box": "boxes",
    "dish": "dishes", "bench": "benches", "toothbrush": "toothbrushes", "fox": "foxes",
    "topaz": "topazes", "waltz": "waltzes", "baby": "babies", "sky": "skies",
    "boy": "boys", "toy": "toys", "key": "keys", "day": "days",
    "hair drier": "hair driers", "teddy bear": "teddy bears", "wine glass": "wine glasses", "bicycle": "bicycles",
    "cow": "cows",
}

IRREGULAR = {  # teacher.pluralize: irregular heads, alone and after modifiers
    "child": "children", "deer": "deer", "fish": "fish", "foot": "feet",
    "glasses": "glasses", "knife": "knives", "leaf": "leaves", "man": "men",
    "mouse": "mice", "person": "people", "scissors": "scissors", "sheep": "sheep",
    "skis": "skis", "tooth": "teeth", "woman": "women",
    "old man": "old men", "young woman": "young women", "small child": "small children",
    "white mouse": "white mice", "left foot": "left feet", "front tooth": "front teeth",
    "black sheep": "black sheep", "bread knife": "bread knives", "green leaf": "green leaves",
    "kitchen scissors": "kitchen scissors", "reading glasses": "reading glasses",
}

COUNTED = {  # teacher.counted(n, noun)
    (0, "object"): "no objects",
    (0, "circle"): "no circles",
    (0, "red circle"): "no red circles",
    (0, "person"): "no people",
    (0, "blue object"): "no blue objects",
    (0, "traffic light"): "no traffic lights",
    (0, "baby"): "no babies",
    (1, "object"): "one object",
    (1, "circle"): "one circle",
    (1, "red circle"): "one red circle",
    (1, "person"): "one person",
    (1, "blue object"): "one blue object",
    (1, "traffic light"): "one traffic light",
    (1, "baby"): "one baby",
    (2, "object"): "two objects",
    (2, "circle"): "two circles",
    (2, "red circle"): "two red circles",
    (2, "person"): "two people",
    (2, "blue object"): "two blue objects",
    (2, "traffic light"): "two traffic lights",
    (2, "baby"): "two babies",
    (11, "object"): "11 objects",
    (11, "circle"): "11 circles",
    (11, "red circle"): "11 red circles",
    (11, "person"): "11 people",
    (11, "blue object"): "11 blue objects",
    (11, "traffic light"): "11 traffic lights",
    (11, "baby"): "11 babies",
    (12, "object"): "12 objects",
    (12, "circle"): "12 circles",
    (12, "red circle"): "12 red circles",
    (12, "person"): "12 people",
    (12, "blue object"): "12 blue objects",
    (12, "traffic light"): "12 traffic lights",
    (12, "baby"): "12 babies",
}


def test_the_tables_cover_every_noun_the_world_and_the_teacher_pluralize():
    # A new shape or colour must be added here (with the plural it should get).
    assert set(WorldConfig().shapes) == set(SHAPES) == set(WORLD_NOUNS) - {"shape", "object"}
    assert set(CATEGORIES) == {f"{c} {s}" for c in COLORS for s in SHAPES} | {f"{c} object" for c in COLORS}


@pytest.mark.parametrize("table", [WORLD_NOUNS, CATEGORIES, OTHER_NOUNS, IRREGULAR])
def test_pluralize_and_plural_write_what_the_old_functions_wrote(table):
    for noun, expected in table.items():
        assert E.pluralize(noun) == expected, noun
        assert E.plural(noun, 1) == noun
        assert E.plural(noun, 0) == E.plural(noun, 2) == E.plural(noun, 11) == expected, noun


def test_counted_and_is_are():
    for (n, noun), expected in COUNTED.items():
        assert E.counted(n, noun) == expected
    assert [E.is_are(n) for n in range(4)] == ["are", "is", "are", "are"]


def test_number_word():
    assert [E.number_word(n) for n in range(-2, 13)] == [
        "-2", "-1", "no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "11", "12"]


def test_a_or_an_goes_by_the_first_letter():
    assert [E.a_or_an(w) for w in ("red circle", "orange square", "object", "item", "egg", "umbrella",
                                  "small red circle", "large orange cross", "medium-sized blue square")] == [
        "a red circle", "an orange square", "an object", "an item", "an egg", "an umbrella",
        "a small red circle", "a large orange cross", "a medium-sized blue square"]


def test_join_words():
    assert [E.join_words(x) for x in (["a"], ["a", "b"], ["a", "b", "c"])] == ["a", "a and b", "a, b and c"]
    assert E.join_words(["one red circle", "two blue squares", "a cross", "a diamond"]) == \
        "one red circle, two blue squares, a cross and a diamond"
    assert [E.join_words(x, "or") for x in (["a"], ["a", "b"], ["a", "b", "c"])] == ["a", "a or b", "a, b or c"]
    assert E.join_words(iter(["x", "y"])) == "x and y"  # any iterable, as the teacher's copy took


XS = (0.0, 0.2, 1 / 3, 0.5, 2 / 3, 0.8)  # the thirds' boundaries belong to the middle cell


def test_position_phrase_on_a_grid_of_centres():
    assert [[E.position_phrase(x, y) for x in XS] for y in XS] == [
        ["top left", "top left", "top", "top", "top", "top right"],
        ["top left", "top left", "top", "top", "top", "top right"],
        ["left", "left", "center", "center", "center", "right"],
        ["left", "left", "center", "center", "center", "right"],
        ["left", "left", "center", "center", "center", "right"],
        ["bottom left", "bottom left", "bottom", "bottom", "bottom", "bottom right"]]


def test_where_in_the_worlds_and_the_teachers_wording():
    corners = ["in the top left corner", "in the top left corner", "at the top", "at the top", "at the top",
               "in the top right corner"]
    bottom = ["in the bottom left corner", "in the bottom left corner", "at the bottom", "at the bottom",
              "at the bottom", "in the bottom right corner"]
    # the world's captions (old world._where): "on the left"
    middle = ["on the left", "on the left", "in the center", "in the center", "in the center", "on the right"]
    assert [[E.where(x, y) for x in XS] for y in XS] == [corners, corners, middle, middle, middle, bottom]
    # the teacher's answers (old teacher.where): "on the left side"
    middle = ["on the left side", "on the left side", "in the center", "in the center", "in the center",
              "on the right side"]
    assert [[E.where(x, y, side=" side") for x in XS] for y in XS] == [corners, corners, middle, middle, middle,
                                                                      bottom]


def test_the_english_helpers_and_the_benchmark_formats_import_light():
    # The dataset writer, the world and the benchmark formats must not pull in torch or transformers.
    import subprocess
    import sys
    code = ("import sys, vlkit.english, vlkit.tokens, vlkit.world, vlkit.world.scienceqa, vlkit.teacher, "
            "vlkit.chat_client, vlkit.chat_teacher, vlkit.data, vlkit.benchmarks.scienceqa, "
            "vlkit.benchmarks.llava_bench; print(sorted({'torch', 'transformers', 'tokenizers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
