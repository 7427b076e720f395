from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from classifier import store
from tests.factories import corrupt_files
from workers.inference import classify


def test_bad_files_fail_alone_and_the_rest_of_the_batch_is_classified(
    tmp_path: Path, photos: list[Path], model_store: Path
) -> None:
    bad = corrupt_files(tmp_path, photos[0])
    paths = [str(photos[0]), str(bad["zero_bytes"]), str(photos[1]), str(bad["truncated"]), str(bad["text"])]
    with ThreadPoolExecutor(2) as pool:
        outcomes = classify(paths, store.load(model_store), torch.device("cpu"), pool)
    assert [o.path for o in outcomes] == paths
    assert [o.error is None for o in outcomes] == [True, False, True, False, False]
    assert outcomes[1].error == "empty file (0 bytes)"
    for good in (outcomes[0], outcomes[2]):
        assert good.label in ("cat", "dog") and 0.5 <= (good.confidence or 0) <= 1


def test_batched_and_single_predictions_agree(photos: list[Path], model_store: Path) -> None:
    model = store.load(model_store)
    paths = [str(p) for p in photos]
    batched = classify(paths, model, torch.device("cpu"))
    single = [classify([p], model, torch.device("cpu"))[0] for p in paths]
    assert [o.label for o in batched] == [o.label for o in single]
    assert [round(o.confidence or 0, 4) for o in batched] == [round(o.confidence or 0, 4) for o in single]
