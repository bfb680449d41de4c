"""Options, the device list and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aquafleet.cli import build_parser
from aquafleet.simulators.cli import options_from_args
from aquafleet.simulators.options import DeviceCredentials, SimError, SimOptions, load_devices


def _csv(tmp_path: Path, rows: int, header: str = "did,key") -> Path:
    path = tmp_path / "devices.csv"
    lines = [header] + [f"SIMT{i:08d},{i:064x}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_devices_takes_the_first_n_rows(tmp_path: Path) -> None:
    devices = load_devices(_csv(tmp_path, 10), 3)
    assert [d.did for d in devices] == ["SIMT00000000", "SIMT00000001", "SIMT00000002"]
    assert devices[2].key == (2).to_bytes(32, "big")


@pytest.mark.parametrize(
    ("rows", "header", "count", "message"),
    [
        (2, "did,key", 5, "holds 2 devices, fewer than the 5"),
        (2, "id,secret", 1, "header did,key"),
    ],
)
def test_load_devices_errors(
    tmp_path: Path, rows: int, header: str, count: int, message: str
) -> None:
    with pytest.raises(SimError, match=message):
        load_devices(_csv(tmp_path, rows, header), count)


def test_load_devices_refuses_a_short_key(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("did,key\nSIMT00000001,abcd\n")
    with pytest.raises(SimError, match="64-hex-digit key"):
        load_devices(path, 1)
    with pytest.raises(SimError, match="cannot read"):
        load_devices(tmp_path / "missing.csv", 1)


def test_defaults_and_derived_values() -> None:
    devices = [DeviceCredentials(f"SIMT{i:08d}", bytes(32)) for i in range(20001)]
    options = SimOptions(devices=devices)
    assert options.resolved_workers == 3  # ceil(20001 / 8000)
    assert options.source_addresses() == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert SimOptions(devices=devices, host="10.0.0.5").source_addresses() == []
    assert SimOptions(devices=devices, host="localhost").connect_host == "127.0.0.1"
    options.validate()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"window": 0}, "--window"),
        ({"storm_at_s": 99.0}, "--storm-at"),
        ({"drop_rate": -1.0}, "--drop-rate"),
        ({"interval_s": 0.01}, "--interval"),
        ({"check": "maybe"}, "--check"),
        ({"connect_timeout_s": 0.0}, "--connect-timeout"),
    ],
)
def test_validation(overrides: dict[str, Any], message: str) -> None:
    options = SimOptions(devices=[DeviceCredentials("SIMT00000001", bytes(32))], **overrides)
    with pytest.raises(SimError, match=message):
        options.validate()


def test_cli_parses_into_options(tmp_path: Path) -> None:
    csv_path = _csv(tmp_path, 5)
    args = build_parser().parse_args(
        [
            "sim",
            "--devices",
            "4",
            "--from",
            str(csv_path),
            "--tcp-port",
            "7800",
            "--duration",
            "20",
            "--window",
            "16",
            "--max-rate",
            "--check",
            "none",
            "--storm-at",
            "5",
            "--connect-timeout",
            "60",
        ]
    )
    options = options_from_args(args)
    assert options.device_count == 4 and options.port == 7800 and options.window == 16
    assert options.max_rate and options.storm_at_s == 5.0 and options.check == "none"
    assert (options.interval_s, options.drain_timeout_s, options.connect_rate) == (10, 30, 5000)
    assert options.connect_timeout_s == 60


def test_cli_takes_the_database_url_from_the_configuration(
    tmp_path: Path, migrated_sqlite: Any
) -> None:
    migrated_sqlite(tmp_path / "data" / "aquafleet.sqlite3")  # what serve made in its data dir
    csv_path = _csv(tmp_path, 1)
    args = build_parser().parse_args(
        ["--data-dir", str(tmp_path / "data"), "sim", "--devices", "1", "--from", str(csv_path)]
    )
    options = options_from_args(args)
    assert options.database_url == f"sqlite://{(tmp_path / 'data' / 'aquafleet.sqlite3')}"


def test_cli_reports_bad_input_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        ["sim", "--devices", "9", "--from", str(_csv(tmp_path, 2)), "--check", "none"]
    )
    assert args.func(args) == 2
    assert "fewer than the 9" in capsys.readouterr().err


def test_sim_takes_the_port_flag_serve_takes_and_the_old_one_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _csv(tmp_path, 2)
    base = ["sim", "--devices", "2", "--from", str(csv_path)]
    assert build_parser().parse_args([*base, "--tcp-port", "7801"]).port == 7801
    assert "deprecated" not in capsys.readouterr().err
    assert build_parser().parse_args([*base, "--port", "7802"]).port == 7802
    assert "--port is deprecated: use --tcp-port" in capsys.readouterr().err
