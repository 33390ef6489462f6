"""Validates serve-guard's rollout recipes offline, with the tools' own validators, and prints what
was validated as JSON for the Rust test (tests/tests/deploy.rs) to check the serve-guard specifics.

Run: python validate_deploy.py kubernetes FILE
         Every document against the Kubernetes OpenAPI schemas bundled in kubernetes-validate,
         strictly (an unknown field is an error), for the oldest and the newest bundled Kubernetes
         release. Prints {"versions": [...], "documents": [...]}.
     python validate_deploy.py ray FILE
         What `ray up` runs before it touches a cloud: prepare_config (merge with the provider's
         defaults) and validate_config (Ray's cluster schema and its checks). Prints the prepared
         config.
Exit status 0 when valid, 1 with the validator's message on stderr when not, 2 on bad usage.
"""

import contextlib
import json
import sys

import yaml


def kubernetes(path):
    from kubernetes_validate.utils import all_versions, validate

    versions = all_versions()  # sorted, oldest first
    checked = [versions[0], versions[-1]]
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d is not None]
    if not documents:
        raise ValueError(f"{path} holds no Kubernetes object")
    for version in checked:
        for doc in documents:
            validate(doc, version, strict=True)
    return {"versions": checked, "documents": documents}


def ray(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(path) as f:
        config = yaml.safe_load(f)
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def main():
    tools = {"kubernetes": kubernetes, "ray": ray}
    if len(sys.argv) != 3 or sys.argv[1] not in tools:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        # Ray's cli_logger prints its warnings on stdout; stdout is for the JSON only.
        with contextlib.redirect_stdout(sys.stderr):
            result = tools[sys.argv[1]](sys.argv[2])
    except Exception as e:  # the validators raise several types; all mean "invalid"
        # A jsonschema error's str() dumps the whole schema; its message and path say enough.
        message = getattr(e, "message", None) or str(e)
        where = "/".join(str(p) for p in getattr(e, "absolute_path", []))
        print(f"{sys.argv[2]}: {type(e).__name__} at /{where}: {message}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
