import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / 'shared' / 'data'
sys.path.insert(0, str(ROOT))


def shared(relative):
    """A file from ../shared/data, or skip the test where it is absent (a user's fresh clone)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f'{path} is absent: the shared test data sits beside the repository only in CI')
    return path



def csv_lines(imgs, names):
    """Kaggle's DHCD layout: a header pixel_0000,...,character, then one row per image, pixel k at
    row k // side, column k % side."""
    side = imgs.shape[-1]
    header = ','.join(f'pixel_{k:04d}' for k in range(side * side)) + ',character'
    rows = [','.join(str(img[k // side, k % side]) for k in range(side * side)) + f',{name}'
            for img, name in zip(imgs, names)]
    return [header, *rows]
