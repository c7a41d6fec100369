"""`lga-export serve` as a KubeRay RayService: Serve application builders for `serveConfigV2`.

A RayService deploys what its `serveConfigV2` names (there is no driver process to run), so the
manifest (deploy/rayservice.yaml) names the two applications `lga-export serve` deploys, each built
here from the same command line:

    applications:
      - name: lga-health
        route_prefix: /v1/health
        import_path: lga_export.cli.rayservice:health
        args: {command: "lga-export serve --model /models/lga --api-key-file /etc/lga/api-key ..."}
      - name: lga
        route_prefix: /
        import_path: lga_export.cli.rayservice:segmenter
        args: {command: "<the same line>"}

The line is parsed by `lga-export serve`'s own Click command (its options, defaults and types),
then checked as `serve` checks it (the model verified, the key read: from the file or
$LGA_API_KEY). What the driver alone honours (--host, --port, --proxy-location, --address,
--num-cpus) is refused in one line: in a RayService those are `serveConfigV2`'s `http_options`
and `proxy_location`. A RayService listens beyond loopback, so a key is required unless the line
says --allow-no-auth.

It lives with the command line, not in `lga_export.serve`, because it is an entry point like
`lga-export serve` itself and parses with that command: serving never imports the CLI.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from lga_export.errors import LGAError

DRIVER_ONLY = {"host": "http_options.host", "port": "http_options.port", "proxy_location": "proxy_location",
               "address": "the RayService's own cluster", "num_cpus": "the worker groups' resources"}
AUTH = {"api_key_file", "allow_no_auth"}


def parse(command: str) -> dict[str, Any]:
    """The options of an `lga-export serve ...` line, as `lga-export serve` parses them, with the
    names of those given explicitly under "_given"."""
    from typer.main import get_command

    from lga_export.cli.main import app

    argv = shlex.split(command)
    if argv[:2] != ["lga-export", "serve"]:
        raise LGAError(f"args.command must be an `lga-export serve ...` line, not {command[:60]!r}")
    serve_command = get_command(app).commands["serve"]
    try:
        context = serve_command.make_context("lga-export serve", argv[2:])
    except Exception as exc:  # noqa: BLE001 - Click's usage errors (Typer vendors its own Click)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise LGAError(f"args.command: {message} (see lga-export serve --help)") from None
    params = dict(context.params)
    params["_given"] = sorted(name for name in params
                              if getattr(context.get_parameter_source(name), "name", "") == "COMMANDLINE")
    return params


def plan(params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(ServeSettings, deployment options) for the parsed line, checked as `serve` checks them."""
    from lga_export.serve.app import Scaling, ServeSettings, deployment_options, resolve_settings
    from lga_export.serve.auth import NO_AUTH_FLAG, key_digest, load_api_key

    given = set(params["_given"])
    settings_fields = {f.name for f in dataclasses.fields(ServeSettings)}
    scaling_fields = {f.name for f in dataclasses.fields(Scaling)}
    driver = sorted(given & set(DRIVER_ONLY))
    if driver:
        raise LGAError(f"args.command: --{driver[0].replace('_', '-')} belongs to the RayService's "
                       f"{DRIVER_ONLY[driver[0]]} in serveConfigV2, not to the command line")
    unknown = sorted(given - settings_fields - scaling_fields - AUTH)
    if unknown:
        raise LGAError(f"args.command: --{unknown[0].replace('_', '-')} is not supported in a RayService yet; "
                       f"drop it or run lga-export serve --address on the cluster")
    values = {name: params[name] for name in settings_fields & set(params)}
    if values.get("model") is not None:
        values["model"] = str(values["model"])
    settings = ServeSettings(**values, threads=max(1, int(params["cpus_per_replica"])))
    scaling = Scaling(**{name: params[name] for name in scaling_fields & set(params)})
    key = load_api_key(params.get("api_key_file"))
    if key is None and not params.get("allow_no_auth"):
        raise LGAError(f"a RayService listens beyond loopback and this line has no API key: add --api-key-file "
                       f"(a mounted Secret) or set $LGA_API_KEY (a secretKeyRef), or pass {NO_AUTH_FLAG}")
    settings = dataclasses.replace(resolve_settings(settings, scaling),
                                   api_key_sha256=key_digest(key) if key is not None else None)
    return settings, deployment_options(settings, scaling)


def segmenter(args: dict[str, Any]) -> Any:
    """serveConfigV2 import_path `lga_export.cli.rayservice:segmenter` (route_prefix /)."""
    from lga_export.serve.app import LGADeployment

    settings, options = plan(parse(_command(args)))
    return LGADeployment.options(**options).bind(dataclasses.asdict(settings))


def health(args: dict[str, Any]) -> Any:
    """serveConfigV2 import_path `lga_export.cli.rayservice:health` (route_prefix /v1/health):
    GET /v1/health from an application of its own, as `lga-export serve` deploys it."""
    from lga_export.serve.app import APP_NAME, LGAHealth

    _, options = plan(parse(_command(args)))
    allow_zero = options.get("autoscaling_config", {}).get("min_replicas", 1) == 0
    return LGAHealth.bind(APP_NAME, allow_zero)


def _command(args: dict[str, Any]) -> str:
    command = (args or {}).get("command")
    if not isinstance(command, str) or not command.strip():
        raise LGAError('serveConfigV2 args must hold command: "lga-export serve --model ... --api-key-file ..."')
    return command
