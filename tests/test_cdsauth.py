"""The CDS client registry and the replay cache on their own (the JWT rules are attacked over HTTP in test_cds)."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kgservice.security.cdsauth import CdsClients, ReplayCache, ReplayCacheFull


def test_a_jti_seen_by_one_process_is_refused_by_another(tmp_path: Path) -> None:
    one, other = ReplayCache(tmp_path / "jti.sqlite", 10), ReplayCache(tmp_path / "jti.sqlite", 10)
    assert one.first_use("https://ehr/", "a", exp=1_000, now=900)
    assert not other.first_use("https://ehr/", "a", exp=1_000, now=901)  # a second connection, as a second worker
    assert other.first_use("https://other-ehr/", "a", exp=1_000, now=901)  # jti is unique per issuer


def test_the_cache_is_bounded_and_refuses_rather_than_forgets(tmp_path: Path) -> None:
    cache = ReplayCache(tmp_path / "jti.sqlite", 2)
    assert cache.first_use("i", "a", exp=1_000, now=900) and cache.first_use("i", "b", exp=1_100, now=900)
    with pytest.raises(ReplayCacheFull):
        cache.first_use("i", "c", exp=1_000, now=900)
    assert not cache.first_use("i", "a", exp=1_000, now=900)  # still remembered
    assert cache.first_use("i", "c", exp=2_000, now=1_050)  # "a" expired (past the leeway) and made room


def test_registration_takes_public_keys_with_a_kid_only(tmp_path: Path) -> None:
    clients = CdsClients(tmp_path / "cds-clients.json")
    key = ec.generate_private_key(ec.SECP384R1())
    private = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    for jwks, why in (({"keys": [{**private, "kid": "k"}]}, "private"), ({"keys": [public]}, "kid"),
                      ({"keys": []}, "keys"), ({"keys": [{"kty": "EC", "kid": "k"}]}, "usable")):
        with pytest.raises(ValueError, match=why):
            clients.add("https://ehr/", "north", jwks)
    with pytest.raises(ValueError, match="site"):
        clients.add("https://ehr/", "North Site", {"keys": [{**public, "kid": "k"}]})
    clients.add("https://ehr/", "north", {"keys": [{**public, "kid": "k"}]})
    assert [(c.iss, c.site) for c in CdsClients(tmp_path / "cds-clients.json").list()] == [("https://ehr/", "north")]
