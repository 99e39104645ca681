"""Write a store as the 1.0 release did and dump it as N-Quads (see README.md; not run by the tests).

Run from a checkout of commit a7c7a25 with that checkout on PYTHONPATH.
"""

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, "bench")

import pyoxigraph as ox  # noqa: E402
from generator import CaseGenerator  # noqa: E402

from kgservice.bulk import load  # noqa: E402
from kgservice.config import Settings  # noqa: E402
from kgservice.core.kb import KnowledgeBase  # noqa: E402


def main() -> None:
    out, data = Path(sys.argv[1]), Path("/tmp/esi-1.0-data")
    settings = Settings(data_dir=data)
    data.mkdir(exist_ok=True)
    vocab = KnowledgeBase.from_settings(settings).vocabulary["input"]
    borderline = json.loads(Path("tests/data/vignettes/p01-primary-non-responder.json").read_text())["case"]
    borderline.update(id="borderline", pain_scores=[{"date": borderline["injection"]["date"], "score": 8},
                                                    {"date": "2026-06-24", "score": 3}])
    borderline["injection"]["date"] = "2026-06-10"
    for site, n, prefix, extra in (("default", 150, "v10", [borderline]), ("south", 10, "s10", [])):
        cases = [*CaseGenerator(vocab, seed=11).cases(n, prefix), *extra]
        src = data / f"{site}.jsonl"
        src.write_text("".join(json.dumps(c) + "\n" for c in cases))
        s = load(settings, src, site=site, workers=0, progress=None)
        assert s.rejected == 0, s.rejections
        store = ox.Store.read_only(str(data / "sites" / site))
        body = ox.serialize(store.quads_for_pattern(None, None, None, None), format=ox.RdfFormat.N_QUADS)
        (out / f"esi-1.0.0-{site}.nq.gz").write_bytes(gzip.compress(body, 9))
        print(site, len(cases), len(body))


if __name__ == "__main__":
    main()
