#!/usr/bin/env python3
"""Checks the Kubernetes manifests in deploy/kubernetes against each other, without a cluster.

Run: python deploy/check.py [--binary target/debug/asap-proxy] [--dir deploy/kubernetes]

Each check names the file and the field it looked at. With --binary, the proxy's own
`check` command also validates the embedded proxy.yaml, signing with a freshly generated key
in place of the Secret's. Exit status: 0 when every check passes, 1 otherwise.
"""

import argparse
import os
import posixpath
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import yaml
except ImportError:
    sys.exit("deploy/check.py needs PyYAML: pip install -r tests/interop/requirements.txt")

KUSTOMIZATION = "kustomization.yaml"
# The shutdown grace the proxy uses when proxy.yaml names none, and the kubelet's default
# terminationGracePeriodSeconds.
DEFAULT_SHUTDOWN_GRACE_SECONDS = 30
DEFAULT_TERMINATION_GRACE_SECONDS = 30


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping key given twice, which PyYAML would let win."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class Report:
    def __init__(self, verbose):
        self.verbose = verbose
        self.passed = 0
        self.failed = 0

    def check(self, ok, where, message):
        """Counts one check; `where` is "file: field", `message` what must hold."""
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"ok    {where}")
        else:
            self.failed += 1
            print(f"FAIL  {where}: {message}")
        return ok

    def summary(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 0 if self.failed == 0 else 1


def dig(obj, path, default=None):
    """obj["a"]["b"][0]... for path "a.b.0", or default when any step is missing."""
    for part in path.split("."):
        if isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return default
    return obj


def is_under(path, directory):
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path.startswith(directory.rstrip("/") + "/")


def port_of(address):
    """8080 for "0.0.0.0:8080" or "[::]:8080"; None for anything else."""
    match = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*):(\d+)", str(address))
    return int(match.group(2)) if match else None


def host_of(address):
    match = re.fullmatch(r"\[?([^\]]*)\]?:\d+", str(address))
    return match.group(1) if match else None


class Manifests:
    """Every document under the directory, by file, with the objects the checks relate."""

    def __init__(self, directory, report):
        self.dir = directory
        self.report = report
        self.docs = []  # (file name, index in file, document)
        self.files = sorted(
            p.name for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
        for name in self.files:
            self.load(name)

    def load(self, name):
        text = (self.dir / name).read_text()
        bad_lines = [
            n for n, line in enumerate(text.splitlines(), 1)
            if "\t" in line or (len(line) - len(line.lstrip(" "))) % 2
        ]
        self.report.check(
            not bad_lines, f"{name}: layout",
            f"tabs or odd indentation on line(s) {bad_lines}; indent with 2 spaces",
        )
        try:
            docs = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]
        except yaml.YAMLError as e:
            self.report.check(False, f"{name}: YAML", f"does not parse: {e}")
            return
        self.report.check(bool(docs), f"{name}: YAML", "holds no document")
        for i, doc in enumerate(docs):
            where = f"{name}" if len(docs) == 1 else f"{name}[{i}]"
            if not self.report.check(isinstance(doc, dict), f"{where}: document", "not a mapping"):
                continue
            fields = ["apiVersion", "kind"]
            # A kustomization is a build file, not an API object: it carries no name.
            if doc.get("kind") != "Kustomization":
                fields.append("metadata.name")
            for field in fields:
                self.report.check(
                    isinstance(dig(doc, field), str) and dig(doc, field) != "",
                    f"{where}: {field}", "missing or not a string",
                )
            self.docs.append((name, i, doc))

    def of_kind(self, kind):
        return [(name, doc) for name, _, doc in self.docs if doc.get("kind") == kind]

    def one(self, kind):
        found = self.of_kind(kind)
        if not self.report.check(
            len(found) == 1, f"{self.dir.name}: {kind}",
            f"expected exactly one {kind}, found {len(found)}",
        ):
            return None, None
        return found[0]


def check_kustomization(m, r):
    name, kust = m.one("Kustomization")
    if kust is None:
        return
    r.check(
        name == KUSTOMIZATION, f"{name}: kind", f"the Kustomization must be in {KUSTOMIZATION}"
    )
    listed = kust.get("resources") or []
    r.check(
        len(listed) == len(set(listed)), f"{name}: resources", f"lists a file twice: {listed}"
    )
    present = set(m.files) - {name}
    missing = sorted(present - set(listed))
    extra = sorted(set(listed) - present)
    r.check(not missing, f"{name}: resources", f"does not list {missing}")
    r.check(not extra, f"{name}: resources", f"lists files that do not exist: {extra}")


def check_selects(r, where, selector, pod_labels):
    """A label selector picks the Deployment's pods when it is non-empty and a subset."""
    selector = selector or {}
    if not r.check(bool(selector), where, "empty: it would select every pod in the namespace"):
        return
    differ = {k: v for k, v in selector.items() if pod_labels.get(k) != v}
    r.check(not differ, where, f"{differ} not among the pod template labels {pod_labels}")


def container_ports(container):
    return {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}


def check_port_ref(r, where, port, ports):
    if isinstance(port, str):
        r.check(port in ports, where, f"named port {port!r} is not one of {sorted(ports)}")
    else:
        r.check(
            port in ports.values(), where,
            f"port {port} is not a container port ({sorted(ports.values())})",
        )


def check_deployment(m, r):
    """Checks the Deployment and everything that points at it; returns what later checks need."""
    dep_file, dep = m.one("Deployment")
    if dep is None:
        return None
    pod_labels = dig(dep, "spec.template.metadata.labels") or {}
    match_labels = dig(dep, "spec.selector.matchLabels") or {}
    check_selects(r, f"{dep_file}: spec.selector.matchLabels", match_labels, pod_labels)

    containers = dig(dep, "spec.template.spec.containers") or []
    if not r.check(
        len(containers) == 1, f"{dep_file}: spec.template.spec.containers",
        f"expected the one proxy container, found {len(containers)}",
    ):
        return None
    container = containers[0]
    cpath = "spec.template.spec.containers[0]"
    ports = container_ports(container)
    for probe in ("livenessProbe", "readinessProbe"):
        handler = container.get(probe) or {}
        r.check(bool(handler), f"{dep_file}: {cpath}.{probe}", "missing")
        for kind in ("httpGet", "tcpSocket", "grpc"):
            if kind in handler:
                check_port_ref(
                    r, f"{dep_file}: {cpath}.{probe}.{kind}.port", handler[kind].get("port"), ports
                )

    dep_name = dep["metadata"]["name"]
    for name, svc in m.of_kind("Service"):
        check_selects(r, f"{name}: spec.selector", dig(svc, "spec.selector"), pod_labels)
        for i, port in enumerate(dig(svc, "spec.ports") or []):
            check_port_ref(
                r, f"{name}: spec.ports[{i}].targetPort",
                port.get("targetPort", port.get("port")), ports,
            )
    for name, pol in m.of_kind("NetworkPolicy"):
        check_selects(
            r, f"{name}: spec.podSelector.matchLabels",
            dig(pol, "spec.podSelector.matchLabels"), pod_labels,
        )
        for i, rule in enumerate(dig(pol, "spec.ingress") or []):
            for j, port in enumerate(rule.get("ports") or []):
                if "port" in port:
                    check_port_ref(
                        r, f"{name}: spec.ingress[{i}].ports[{j}].port", port["port"], ports
                    )
    for name, hpa in m.of_kind("HorizontalPodAutoscaler"):
        target = dig(hpa, "spec.scaleTargetRef") or {}
        want = {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep_name}
        got = {k: target.get(k) for k in want}
        r.check(got == want, f"{name}: spec.scaleTargetRef", f"is {got}, expected {want}")
        scales_on_cpu = any(
            dig(metric, "resource.name") == "cpu" for metric in dig(hpa, "spec.metrics") or []
        )
        if scales_on_cpu:
            r.check(
                dig(container, "resources.requests.cpu") is not None,
                f"{dep_file}: {cpath}.resources.requests.cpu",
                f"missing: {name} scales on CPU utilisation, a share of the request",
            )
    for kind in ("Service", "NetworkPolicy", "HorizontalPodAutoscaler"):
        r.check(bool(m.of_kind(kind)), f"{m.dir.name}: {kind}", f"no {kind} found")
    return dep_file, dep, container, ports


def mount_for(path, container, volumes):
    """The deepest whole-directory mount holding path, and its volume; (None, None) if none."""
    best = (None, None)
    for mount in container.get("volumeMounts") or []:
        if is_under(path, mount.get("mountPath", "")) and (
            best[0] is None or len(mount["mountPath"]) > len(best[0]["mountPath"])
        ):
            best = (mount, volumes.get(mount.get("name")))
    return best


def projected_key(volume_source, relative):
    """The ConfigMap or Secret key that appears at `relative` inside its volume, or None."""
    items = volume_source.get("items")
    if items:
        return next((i.get("key") for i in items if i.get("path") == relative), None)
    return relative


def check_volumes_and_config(m, r, deployment):
    """Checks mounts, the embedded proxy.yaml and grace periods; returns what --binary needs."""
    dep_file, dep, container, ports = deployment
    spec = dig(dep, "spec.template.spec")
    cpath = "spec.template.spec.containers[0]"
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    configmaps = {doc["metadata"]["name"]: (name, doc) for name, doc in m.of_kind("ConfigMap")}
    secrets = {doc["metadata"]["name"]: (name, doc) for name, doc in m.of_kind("Secret")}

    for vname, volume in volumes.items():
        where = f"{dep_file}: spec.template.spec.volumes[{vname}]"
        if "configMap" in volume:
            ref = dig(volume, "configMap.name")
            r.check(ref in configmaps, f"{where}.configMap.name", f"no ConfigMap named {ref!r}")
        if "secret" in volume:
            ref = dig(volume, "secret.secretName")
            r.check(ref in secrets, f"{where}.secret.secretName", f"no Secret named {ref!r}")
    for i, mount in enumerate(container.get("volumeMounts") or []):
        where = f"{dep_file}: {cpath}.volumeMounts[{i}]"
        r.check(mount.get("name") in volumes, f"{where}.name", f"no volume {mount.get('name')!r}")
        r.check(
            "subPath" not in mount and "subPathExpr" not in mount, f"{where}.subPath",
            "subPath mounts never see ConfigMap or Secret updates, so reloads would miss them",
        )

    args = container.get("args") or []
    config_path = None
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            config_path = args[i + 1]
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
    if not r.check(
        config_path is not None, f"{dep_file}: {cpath}.args", "does not name --config PATH"
    ):
        return None
    mount, volume = mount_for(config_path, container, volumes)
    if not r.check(
        volume is not None and "configMap" in volume, f"{dep_file}: {cpath}.args",
        f"config {config_path} is not inside a ConfigMap volume mount",
    ):
        return None
    cm_file, cm = configmaps.get(dig(volume, "configMap.name"), (None, None))
    if cm is None:
        return None
    key = projected_key(volume["configMap"], posixpath.relpath(config_path, mount["mountPath"]))
    config_text = dig(cm, "data", {}).get(key) if key else None
    if not r.check(
        isinstance(config_text, str), f"{cm_file}: data",
        f"has no key {key!r} for {config_path}",
    ):
        return None
    where = f"{cm_file}: data.{key}"
    try:
        config = yaml.load(config_text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        r.check(False, where, f"does not parse: {e}")
        return None
    if not r.check(isinstance(config, dict), where, "not a mapping"):
        return None

    for field, port_name in (("listen", "proxy"), ("admin", "admin")):
        address = config.get(field)
        r.check(
            port_of(address) is not None and port_of(address) == ports.get(port_name),
            f"{where}: {field}",
            f"{address!r} does not use the container port {port_name!r} ({ports.get(port_name)})",
        )
        r.check(
            host_of(address) not in ("127.0.0.1", "::1", "localhost"),
            f"{where}: {field}", f"{address!r} is loopback, unreachable from outside the pod",
        )

    key_files = {}  # private_key_file -> (algorithm, kid, field) of the first use
    default = config.get("asap") or {}
    blocks = [("asap", default)] + [
        (f"routes[{i}].asap", {**default, **(route.get("asap") or {})})
        for i, route in enumerate(config.get("routes") or [])
    ]
    for field, asap in blocks:
        path = asap.get("private_key_file")
        if path is None or path in key_files:
            continue
        key_files[path] = (asap.get("algorithm"), asap.get("kid"), f"{field}.private_key_file")
        kmount, kvolume = mount_for(path, container, volumes)
        if not r.check(
            kvolume is not None and "secret" in kvolume, f"{where}: {field}.private_key_file",
            f"{path} is not inside a Secret volume mount",
        ):
            continue
        secret_file, secret = secrets.get(dig(kvolume, "secret.secretName"), (None, None))
        if secret is None:
            continue
        secret_key = projected_key(kvolume["secret"], posixpath.relpath(path, kmount["mountPath"]))
        held = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
        r.check(
            secret_key in held, f"{where}: {field}.private_key_file",
            f"{path} needs key {secret_key!r} in Secret {secret_file}, which holds {sorted(held)}",
        )
        mode = dig(kvolume, "secret.defaultMode", 0o644)
        pod_security = spec.get("securityContext") or {}
        user = dig(container, "securityContext.runAsUser", pod_security.get("runAsUser"))
        r.check(
            mode & 0o044 or user == 0 or pod_security.get("fsGroup") is not None,
            f"{dep_file}: spec.template.spec.securityContext.fsGroup",
            f"the key is mode {mode:o} and owned by root, so user {user} cannot read it "
            "without an fsGroup",
        )

    grace = config.get("shutdown_grace_seconds", DEFAULT_SHUTDOWN_GRACE_SECONDS)
    termination = spec.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_SECONDS)
    r.check(
        isinstance(grace, (int, float)) and termination > grace,
        f"{dep_file}: spec.template.spec.terminationGracePeriodSeconds",
        f"{termination} must exceed shutdown_grace_seconds ({grace}) in {cm_file}, or the kubelet "
        "kills the proxy while it drains",
    )
    return where, config_text, key_files


def check_with_binary(r, binary, embedded):
    """Runs `asap-proxy check` on the embedded config, with generated keys at the key paths."""
    where, config_text, key_files = embedded
    binary = Path(binary).resolve()
    with tempfile.TemporaryDirectory(prefix="asap-proxy-deploy-") as tmp:
        for n, (path, (algorithm, kid, field)) in enumerate(sorted(key_files.items())):
            out = Path(tmp) / f"keys{n}"
            gen = subprocess.run(
                [binary, "keygen", "--algorithm", str(algorithm), "--kid", str(kid), "--out", out],
                capture_output=True, text=True,
            )
            if not r.check(
                gen.returncode == 0, f"{where}: {field}",
                f"`asap-proxy keygen --algorithm {algorithm} --kid {kid}` exited "
                f"{gen.returncode}: {gen.stderr.strip()}",
            ):
                return
            generated = out / "private" / f"{kid}.pem"
            # Replace the path as written, leaving the rest of the file byte for byte.
            config_text = re.sub(
                re.escape(path) + r"(?![\w./-])", lambda _: str(generated), config_text
            )
        config = Path(tmp) / "proxy.yaml"
        config.write_text(config_text)
        env = {k: v for k, v in os.environ.items() if k != "ASAP_PROXY_CONFIG"}
        run = subprocess.run(
            [binary, "check", "-c", config], capture_output=True, text=True, env=env
        )
        r.check(
            run.returncode == 0, f"{where}: asap-proxy check",
            # Name the embedded file, whose lines the rewritten copy keeps, not the copy.
            f"exited {run.returncode}: "
            + (run.stderr or run.stdout).strip().replace(str(config), "proxy.yaml"),
        )


def main():
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=here / "kubernetes",
                        help="the manifests (default: deploy/kubernetes)")
    parser.add_argument("--binary", help="an asap-proxy binary to validate proxy.yaml with")
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing checks too")
    args = parser.parse_args()

    r = Report(args.verbose)
    if not args.dir.is_dir():
        sys.exit(f"deploy/check.py: {args.dir} is not a directory")
    m = Manifests(args.dir, r)
    check_kustomization(m, r)
    deployment = check_deployment(m, r)
    embedded = check_volumes_and_config(m, r, deployment) if deployment else None
    if args.binary:
        if embedded:
            check_with_binary(r, args.binary, embedded)
        else:
            r.check(False, f"{args.dir.name}: --binary", "skipped: no proxy.yaml to check")
    return r.summary()


if __name__ == "__main__":
    sys.exit(main())
