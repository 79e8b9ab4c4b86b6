#!/usr/bin/env python3
"""Fails when an IAM statement of the functions' roles uses `*` outside the token secrets' prefix.

Checks every inline policy statement of every AWS::Serverless::Function (and any
AWS::IAM::Role / AWS::IAM::Policy / AWS::IAM::ManagedPolicy) in the template: no `*` in an
Action, and no `*` in a Resource except the one allowed pattern, the per-login token secrets
`...:secret:${AWS::StackName}/tokens/*`. SAM policy templates and managed policy names are
refused too (they hide their resources). The KMS key's own key policy is not a role policy and is
not checked (a key policy needs `Resource: "*"`).

Usage: check_iam.py template.yaml   (runs a self-test on a bad statement first)
"""

import sys

import yaml

ALLOWED_WILDCARD = ":secret:${AWS::StackName}/tokens/*"


class CfnLoader(yaml.SafeLoader):
    """Keeps CloudFormation short tags as {"Fn::X": value} (what they mean does not matter here)."""


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else "Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _tag)


def strings(value):
    """Every string inside a (resolved or not) template value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)


def statements_of(template):
    """(where, statement) for every role policy statement in the template."""
    for name, res in template.get("Resources", {}).items():
        kind, props = res.get("Type"), res.get("Properties", {}) or {}
        if kind == "AWS::Serverless::Function":
            for i, pol in enumerate(props.get("Policies", []) or []):
                if isinstance(pol, dict) and "Statement" in pol:
                    for j, st in enumerate(pol["Statement"]):
                        yield f"{name}.Policies[{i}].Statement[{j}]", st
                else:
                    yield f"{name}.Policies[{i}]", {"Opaque": pol}
        elif kind in ("AWS::IAM::Role",):
            for i, pol in enumerate(props.get("Policies", []) or []):
                for j, st in enumerate(pol.get("PolicyDocument", {}).get("Statement", [])):
                    yield f"{name}.Policies[{i}].Statement[{j}]", st
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for j, st in enumerate(props.get("PolicyDocument", {}).get("Statement", [])):
                yield f"{name}.Statement[{j}]", st


def problems(template):
    out = []
    for where, st in statements_of(template):
        if "Opaque" in st:
            out.append(f"{where}: a managed policy or SAM policy template; write the statement out")
            continue
        for a in strings(st.get("Action", [])):
            if "*" in a:
                out.append(f"{where}: Action {a!r} uses *")
        if "NotResource" in st or "NotAction" in st:
            out.append(f"{where}: NotResource/NotAction are not allowed")
        for r in strings(st.get("Resource", [])):
            if "*" in r and not r.endswith(ALLOWED_WILDCARD):
                out.append(f"{where}: Resource {r!r} uses * outside the token secrets' prefix")
    return out


BAD = """
Resources:
  F:
    Type: AWS::Serverless::Function
    Properties:
      Policies:
        - Statement:
            - {Effect: Allow, Action: sqs:*, Resource: !GetAtt Q.Arn}
            - {Effect: Allow, Action: kms:Decrypt, Resource: "*"}
            - {Effect: Allow, Action: secretsmanager:GetSecretValue, Resource: !Sub "arn:x:secret:${AWS::StackName}/tokens/*"}
        - AWSLambdaBasicExecutionRole
"""


def main():
    bad = problems(yaml.load(BAD, Loader=CfnLoader))
    if len(bad) != 3:
        print(f"check_iam.py self-test failed: {bad}", file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        template = yaml.load(f, Loader=CfnLoader)
    found = problems(template)
    count = sum(1 for _ in statements_of(template))
    for p in found:
        print(p, file=sys.stderr)
    if found:
        print(f"check_iam.py: {len(found)} wildcard(s) in {count} role statements", file=sys.stderr)
        return 1
    print(f"check_iam.py: {count} role statements, no * outside the token secrets' prefix")
    return 0


if __name__ == "__main__":
    sys.exit(main())
