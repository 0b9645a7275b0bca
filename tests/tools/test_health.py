from tools.health import Health, overall


def test_status_follows_ok_and_serving() -> None:
    assert Health.up("好").status == "ok"
    assert Health.degraded("MaxKB 连不上", "检查地址").status == "degraded"
    assert Health.down("数据库坏了").status == "down"


def test_json_names_the_error_and_the_fix() -> None:
    assert Health.up().as_json() == {"ok": True, "status": "ok"}
    assert Health.down("连不上", "启动它").as_json() == {
        "ok": False,
        "status": "down",
        "error": "连不上",
        "fix": "启动它",
    }


def test_overall_is_the_worst_check() -> None:
    up, degraded, down = Health.up(), Health.degraded("x"), Health.down("y")
    assert overall({"a": up, "b": up}) == "ok"
    assert overall({"a": up, "b": degraded}) == "degraded"
    assert overall({"a": degraded, "b": down}) == "down"
    assert overall({}) == "ok"
