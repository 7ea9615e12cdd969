"""The dataset registry: every reader by name, and only the options a reader takes."""

import pytest

from vismae.data import sources


def test_registry_names_every_reader_and_refuses_foreign_options(tmp_path):
    assert set(sources.READERS) == {"vindr", "cdd-cesm", "cbis-ddsm", "table", "rsna", "folder"}
    assert sources.options_of("cdd-cesm") == {"include_cesm", "paper_split", "seed", "allow_missing"}
    assert sources.options_of("vindr") == {"allow_missing"}
    with pytest.raises(ValueError, match="dataset vindr takes no option seed"):
        sources.read_dataset("vindr", tmp_path, seed=1)
    with pytest.raises(ValueError, match="unknown dataset 'inbreast'"):
        sources.reader("inbreast")
