import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from agent.policy.tenants import KEY_PREFIX, OPEN_PRINCIPAL, Principal, TenantStore, hash_key


@pytest.fixture
def store(tmp_path: Path) -> TenantStore:
    return TenantStore(tmp_path / "tenants.sqlite")


def test_issue_authenticate_and_revoke(store: TenantStore):
    store.create_tenant("acme", ("default", "faq"))
    key = store.issue_key("acme", label="bot 1")

    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 32
    principal = Principal(tenant="acme", role="client", key_id=hash_key(key)[:12])
    assert store.authenticate(key) == principal
    assert store.authenticate(f"Bearer {key}") == principal
    assert store.authenticate(f"bearer   {key} ") == principal
    assert store.authenticate(None) is None
    assert store.authenticate("") is None
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.authenticate("Bearer nonsense") is None

    revoked = store.revoke_key(key)
    assert revoked is not None and revoked.revoked_at is not None
    assert store.authenticate(key) is None
    assert store.revoke_key(key) is None


def test_revoke_by_key_id_prefix(store: TenantStore):
    store.create_tenant("acme")
    first, second = store.issue_key("acme"), store.issue_key("acme")
    key_id = store.authenticate(first).key_id  # type: ignore[union-attr]

    with pytest.raises(ValueError, match="6"):
        store.revoke_key(key_id[:3])
    revoked = store.revoke_key(key_id[:8])

    assert revoked is not None and revoked.key_id == key_id
    assert store.authenticate(first) is None
    assert store.authenticate(second) is not None


def test_only_hashes_are_stored(tmp_path: Path):
    path = tmp_path / "tenants.sqlite"
    store = TenantStore(path)
    store.create_tenant("acme")
    key = store.issue_key("acme", label="secret-free label")

    listed = store.list_keys()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    store.close()

    assert [k.label for k in listed] == ["secret-free label"]
    assert key not in repr(listed)
    assert hash_key(key).encode() in on_disk
    assert key.encode() not in on_disk
    assert key.removeprefix(KEY_PREFIX).encode() not in on_disk


def test_open_until_the_first_key_and_not_again_after_revoking(store: TenantStore):
    assert store.is_open()
    assert OPEN_PRINCIPAL.tenant == "default" and OPEN_PRINCIPAL.is_admin

    store.create_tenant("default")
    assert store.is_open()
    key = store.issue_key("default")
    assert not store.is_open()

    store.revoke_key(key)
    assert not store.is_open()


def test_admin_role(store: TenantStore):
    store.create_tenant("ops")
    admin = store.authenticate(store.issue_key("ops", role="admin"))
    client = store.authenticate(store.issue_key("ops"))

    assert admin is not None and admin.is_admin
    assert client is not None and not client.is_admin
    with pytest.raises(ValueError, match="role"):
        store.issue_key("ops", role="root")  # type: ignore[arg-type]


def test_tenants_and_their_knowledge_bases(store: TenantStore):
    store.create_tenant("b", ("kb1", "kb2", "kb1"))
    store.create_tenant("a")

    assert [(t.name, t.knowledge_bases) for t in store.list_tenants()] == [
        ("a", ("default",)),
        ("b", ("kb1", "kb2")),
    ]
    assert store.set_knowledge_bases("a", ("faq",)).knowledge_bases == ("faq",)
    assert store.tenant("a").knowledge_bases == ("faq",)  # type: ignore[union-attr]
    assert store.tenant("missing") is None
    with pytest.raises(ValueError, match="already exists"):
        store.create_tenant("a")
    with pytest.raises(ValueError, match="tenant name"):
        store.create_tenant("bad name")
    with pytest.raises(ValueError, match="knowledge base"):
        store.create_tenant("c", ())
    with pytest.raises(KeyError):
        store.issue_key("missing")
    with pytest.raises(KeyError):
        store.set_knowledge_bases("missing", ("x",))


def test_tenants_and_their_link_domains(store: TenantStore):
    store.create_tenant("a", link_domains=("Docs.Example.com", "*.example.org", "docs.example.com"))
    store.create_tenant("b")

    assert store.tenant("a").link_domains == ("docs.example.com", "example.org")  # type: ignore[union-attr]
    assert store.tenant("b").link_domains == ()  # type: ignore[union-attr]
    assert store.set_link_domains("b", ["example.net"]).link_domains == ("example.net",)
    assert store.set_link_domains("a", []).link_domains == ()
    assert [t.link_domains for t in store.list_tenants()] == [(), ("example.net",)]
    with pytest.raises(ValueError, match="不是域名"):
        store.create_tenant("c", link_domains=("not a domain",))
    assert store.tenant("c") is None
    with pytest.raises(ValueError, match="不是域名"):
        store.set_link_domains("a", ["https://"])
    with pytest.raises(KeyError):
        store.set_link_domains("missing", ["example.com"])


def test_a_database_from_before_link_domains_gains_the_column(tmp_path: Path):
    path = tmp_path / "tenants.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE tenants (name TEXT PRIMARY KEY, knowledge_bases TEXT, created_at TEXT)"
    )
    old.execute("INSERT INTO tenants VALUES ('acme', '[\"faq\"]', '2025-01-01T00:00:00+00:00')")
    old.commit()
    old.close()

    first, second = TenantStore(path), TenantStore(path)  # the second finds it migrated
    acme = first.tenant("acme")
    assert acme is not None and (acme.knowledge_bases, acme.link_domains) == (("faq",), ())
    assert first.set_link_domains("acme", ["example.com"]).link_domains == ("example.com",)
    assert second.tenant("acme").link_domains == ("example.com",)  # type: ignore[union-attr]
    first.create_tenant("newco")
    assert second.tenant("newco").link_domains == ()  # type: ignore[union-attr]


def test_a_migration_raced_by_another_process_still_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Worker processes start together and may all find the column missing."""
    path = tmp_path / "tenants.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE tenants (name TEXT PRIMARY KEY, knowledge_bases TEXT, created_at TEXT)"
    )
    old.close()
    add_column = sqlite_utils.db.Table.add_column

    def raced(table: sqlite_utils.db.Table, *args: Any, **kwargs: Any) -> Any:
        add_column(table, *args, **kwargs)  # the other process, a moment earlier
        return add_column(table, *args, **kwargs)

    monkeypatch.setattr(sqlite_utils.db.Table, "add_column", raced)
    store = TenantStore(path)
    assert store.create_tenant("acme").link_domains == ()


def test_keys_listed_per_tenant_and_seen_by_another_store(tmp_path: Path):
    path = tmp_path / "tenants.sqlite"
    first = TenantStore(path)
    first.create_tenant("a")
    first.create_tenant("b")
    key_a = first.issue_key("a", label="A")
    first.issue_key("b", role="admin", label="B")

    second = TenantStore(path)
    assert [k.label for k in second.list_keys("a")] == ["A"]
    assert sorted((k.tenant, k.role) for k in second.list_keys()) == [
        ("a", "client"),
        ("b", "admin"),
    ]
    assert second.authenticate(key_a) is not None

    second.revoke_key(key_a)
    assert first.authenticate(key_a) is None
    assert [k.active for k in first.list_keys("a")] == [False]


def test_only_the_exact_key_shape_authenticates(store: TenantStore):
    store.create_tenant("acme")
    key = store.issue_key("acme")
    assert store.authenticate(key + "\n") is not None  # surrounding whitespace is stripped
    assert store.authenticate(key + "x") is None
    assert store.authenticate(f"Basic {key}") is None
    with pytest.raises(ValueError, match="tenant name"):
        store.create_tenant("acme\n")


def test_rotating_a_key_revokes_it_and_issues_one_like_it(store: TenantStore):
    store.create_tenant("acme")
    old = store.issue_key("acme", "admin", label="运维")
    old_id = store.authenticate(old).key_id  # type: ignore[union-attr]
    rotation = store.rotate_key(old_id[:8])
    assert rotation is not None
    assert (rotation.old.key_id, rotation.old.active) == (old_id, False)
    assert store.authenticate(old) is None
    assert store.authenticate(rotation.secret) == Principal("acme", "admin", rotation.new.key_id)
    listed = {key.key_id: key for key in store.list_keys("acme")}
    assert listed[rotation.new.key_id].label == "运维" and listed[rotation.new.key_id].active
    assert store.rotate_key(old) is None  # a revoked key cannot be rotated again
    with pytest.raises(ValueError):
        store.rotate_key("abc")


def test_removing_a_tenant_revokes_its_keys_and_keeps_the_service_locked(store: TenantStore):
    store.create_tenant("acme")
    store.create_tenant("other")
    key, revoked_earlier = store.issue_key("acme"), store.issue_key("acme")
    store.revoke_key(revoked_earlier)
    kept = store.issue_key("other")
    revoked = store.remove_tenant("acme")
    assert [info.key_id for info in revoked] == [hash_key(key)[:12]]
    assert store.tenant("acme") is None and store.authenticate(key) is None
    assert store.authenticate(kept) is not None
    store.remove_tenant("other")
    # No tenant and no active key left, yet the service does not fall open.
    assert store.list_tenants() == [] and not store.is_open()
    with pytest.raises(KeyError):
        store.remove_tenant("acme")
