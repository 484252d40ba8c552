"""``sm8cd staff …``: the staff ⇄ user map."""

from __future__ import annotations

from typing import Annotated

import typer

from bridge.cli.base import app, command_runtime, handles_errors, out, print_report

staff_app = typer.Typer(help="The staff ⇄ user map (matched by e-mail, overridable by hand).")
app.add_typer(staff_app, name="staff")


@staff_app.command("list")
@handles_errors
def staff_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every ServiceM8 staff member, the Coredination user they map to, and how."""
    import json

    from rich.table import Table

    with command_runtime() as rt:
        staff = rt.stores.staff.directory("staff")
        users = rt.stores.staff.directory("users")
        mapping = rt.stores.staff.staff_map()
    rows = []
    for uuid, info in sorted(staff.items(), key=lambda kv: str(kv[1].get("name"))):
        user = mapping.s2u.get(uuid)
        how = "manual" if uuid in mapping.manual else "e-mail" if user is not None else "unmapped"
        rows.append({
            "sm8_staff_uuid": uuid,
            "name": info.get("name"),
            "email": info.get("email"),
            "cd_user_id": user,
            "cd_user": (users.get(str(user)) or {}).get("email") if user is not None else None,
            "how": how,
        })  # fmt: skip
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="Staff ⇄ users")
    columns = ("name", "email", "cd_user_id", "cd_user", "how", "sm8_staff_uuid")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) if row[c] is not None else "-" for c in columns))
    out.print(table)
    if not rows:
        out.print("No staff known yet: run 'sm8cd staff match' first.")


@staff_app.command("match")
@handles_errors
def staff_match() -> None:
    """Read both directories now and link staff to users by e-mail (case-insensitive)."""
    with command_runtime() as rt:
        report = rt.engine.match_staff()
    print_report(dict(report.counts))


@staff_app.command("link")
@handles_errors
def staff_link(
    sm8_staff_uuid: Annotated[str, typer.Argument(help="ServiceM8 staff uuid.")],
    cd_user_id: Annotated[int, typer.Argument(help="Coredination user id.")],
) -> None:
    """Link a staff member to a user by hand; automatic matching will leave it alone."""
    from bridge.ops.actions import link_staff

    with command_runtime() as rt:
        link_staff(rt.stores, sm8_staff_uuid, cd_user_id)
    out.print(f"linked {sm8_staff_uuid} → {cd_user_id}; parked allocations will be retried")


@staff_app.command("unlink")
@handles_errors
def staff_unlink(
    sm8_staff_uuid: Annotated[str, typer.Argument(help="ServiceM8 staff uuid.")],
) -> None:
    """Remove a link by hand; the staff member's allocations are parked until linked again."""
    with command_runtime() as rt:
        rt.engine.unlink_staff(sm8_staff_uuid)
    out.print(f"unlinked {sm8_staff_uuid}")
