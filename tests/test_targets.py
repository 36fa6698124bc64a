"""common.data.targets: the target dicts every loss and matcher reads."""
import numpy as np
import pytest

from common.data.targets import numpy_targets


def test_types_shapes_and_dropped_keys():
    out = numpy_targets([{"labels": [1, 2], "boxes": [[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]], "image_id": 7},
                         {"labels": np.zeros(0), "boxes": np.zeros((0, 4))}])
    assert out[0]["labels"].dtype == np.int64 and out[0]["boxes"].dtype == np.float32
    assert out[0]["boxes"].shape == (2, 4) and set(out[0]) == {"labels", "boxes"}
    assert out[1]["labels"].shape == (0,) and out[1]["boxes"].shape == (0, 4)


def test_converter_is_applied():
    class Fake:  # stands in for a framework tensor
        def __init__(self, a):
            self.a = np.asarray(a)
    out = numpy_targets([{"labels": Fake([3]), "boxes": Fake([[0.5, 0.5, 1, 1]])}], lambda x: x.a)
    assert out[0]["labels"].tolist() == [3]


@pytest.mark.parametrize("target, match", [
    ({"boxes": np.zeros((1, 4))}, r"targets\[0\] has no 'labels'"),
    ({"labels": [1, 2], "boxes": np.zeros((1, 4))}, r"targets\[0\]: 2 labels but 1 boxes"),
])
def test_errors_name_the_image(target, match):
    with pytest.raises(ValueError, match=match):
        numpy_targets([target])
