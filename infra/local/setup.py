#!/usr/bin/env python3
"""Creates adsync's AWS resources on the local stack, from template.yaml.

template.yaml is the single source of truth: this reads its AWS::KMS::Key, AWS::DynamoDB::Table,
AWS::SQS::Queue and AWS::SecretsManager::Secret resources and the functions' environment
(Globals), resolves them as if the stack were named "adsync" (so `!Sub "${AWS::StackName}-accounts"`
becomes `adsync-accounts`), creates what is missing on DynamoDB Local and moto, seeds the local
secrets, and prints the functions' environment as `KEY=value` lines on stdout.

Idempotent: existing tables, queues and secrets are kept (secret values are updated if they differ).
Run with the tool venv's python (boto3 and PyYAML come with moto and SAM).
"""

import argparse
import hashlib
import json
import sys
import time

import boto3
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"


class CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation short tags (!Ref, !Sub, !GetAtt, …) into the
    long form ({"Ref": …}, {"Fn::Sub": …}, {"Fn::GetAtt": […]})."""


def _cfn_tag(loader, tag_suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + tag_suffix: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


# What `!Ref AWS::NoValue` resolves to: the property is dropped.
NO_VALUE = object()


class Resolver:
    """Resolves the intrinsic functions the template uses, for a local stack named `stack_name`."""

    def __init__(self, template, stack_name, overrides):
        self.resources = template.get("Resources", {})
        self.parameters = template.get("Parameters", {})
        self.conditions = template.get("Conditions", {})
        self.pseudo = {
            "AWS::StackName": stack_name,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        # Physical values of resources once created (queue URLs, ARNs).
        self.physical = {}
        self.overrides = overrides

    def resolve(self, value):
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, list):
            return [v for v in (self.resolve(v) for v in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            raise ValueError(f"unsupported template value {value!r}")
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::Sub":
                return self.sub(arg)
            if key == "Fn::GetAtt":
                return self.get_att(arg[0], arg[1])
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
            if key.startswith("Fn::"):
                raise ValueError(f"setup.py does not support {key} (in {value!r})")
        out = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def condition(self, name):
        """Evaluates a named condition (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition)."""
        return self.evaluate(self.conditions[name])

    def evaluate(self, expr):
        (key, arg), = expr.items()
        if key == "Fn::Equals":
            a, b = (self.resolve(x) for x in arg)
            return str(a) == str(b)
        if key == "Fn::Not":
            return not self.evaluate(arg[0])
        if key == "Fn::And":
            return all(self.evaluate(x) for x in arg)
        if key == "Fn::Or":
            return any(self.evaluate(x) for x in arg)
        if key == "Condition":
            return self.condition(arg)
        raise ValueError(f"setup.py does not support the condition {key}")

    def ref(self, name):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            if name in self.overrides:
                return self.overrides[name]
            return str(self.parameters[name].get("Default", ""))
        res = self.resources.get(name)
        if res is None:
            raise ValueError(f"!Ref {name}: no such parameter or resource")
        kind, props = res["Type"], res.get("Properties", {})
        if kind == "AWS::DynamoDB::Table":
            return self.resolve(props["TableName"])
        if kind == "AWS::SQS::Queue":
            return self.physical[name]["url"]
        if kind == "AWS::KMS::Key":
            return self.physical[name]["KeyId"]
        if kind == "AWS::SecretsManager::Secret":
            # Ref is the ARN on AWS; locally the name is what every client accepts.
            return self.resolve(props["Name"])
        if kind == "AWS::Serverless::Function":
            # Locally a function is its binary, served (and invoked) by `cargo lambda watch`.
            return res["Metadata"]["BuildProperties"]["Binary"]
        raise ValueError(f"!Ref {name}: resource type {kind} is not supported locally")

    def get_att(self, name, attr):
        if name in self.physical and attr in self.physical[name]:
            return self.physical[name][attr]
        raise ValueError(f"!GetAtt {name}.{attr} is not known yet (resource order?)")

    def sub(self, arg):
        template, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        out, i = [], 0
        while i < len(template):
            start = template.find("${", i)
            if start < 0:
                out.append(template[i:])
                break
            end = template.index("}", start)
            out.append(template[i:start])
            name = template[start + 2 : end]
            if name.startswith("!"):
                out.append("${" + name[1:] + "}")
            elif name in variables:
                out.append(str(self.resolve(variables[name])))
            elif "." in name:
                res, attr = name.split(".", 1)
                out.append(str(self.get_att(res, attr)))
            else:
                out.append(str(self.ref(name)))
            i = end + 1
        return "".join(out)


def of_type(template, kind):
    return [(n, r) for n, r in template.get("Resources", {}).items() if r.get("Type") == kind]


def create_keys(kms, template, resolver, log):
    """The template's KMS keys (those its conditions create), found again by their alias."""
    aliases = {}
    for _, res in of_type(template, "AWS::KMS::Alias"):
        target = res["Properties"]["TargetKeyId"]
        if isinstance(target, dict) and "Ref" in target:
            aliases[target["Ref"]] = resolver.resolve(res["Properties"]["AliasName"])
    existing = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    for logical, res in of_type(template, "AWS::KMS::Key"):
        if "Condition" in res and not resolver.condition(res["Condition"]):
            continue
        alias = aliases.get(logical, f"alias/{resolver.pseudo['AWS::StackName']}-{logical}")
        key_id = existing.get(alias)
        if key_id:
            log(f"kms key {alias}: exists")
        else:
            key_id = kms.create_key(Description=f"adsync local {logical}")["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName=alias, TargetKeyId=key_id)
            log(f"kms key {alias}: created ({logical})")
        arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        resolver.physical[logical] = {"KeyId": key_id, "Arn": arn}


def wait_active(ddb, name, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ddb.describe_table(TableName=name)["Table"]["TableStatus"] == "ACTIVE":
            return
        time.sleep(0.2)
    raise RuntimeError(f"table {name} did not become ACTIVE in {timeout}s")


def create_tables(ddb, template, resolver, log):
    existing = set()
    for page in ddb.get_paginator("list_tables").paginate():
        existing.update(page["TableNames"])
    for logical, res in of_type(template, "AWS::DynamoDB::Table"):
        props = resolver.resolve(res["Properties"])
        name = props["TableName"]
        if name in existing:
            log(f"table {name}: exists")
        else:
            kwargs = {
                "TableName": name,
                "AttributeDefinitions": props["AttributeDefinitions"],
                "KeySchema": props["KeySchema"],
                "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
            }
            if props.get("GlobalSecondaryIndexes"):
                kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
            ddb.create_table(**kwargs)
            wait_active(ddb, name)
            log(f"table {name}: created ({logical})")
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            desc = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            if desc.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                ddb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
                )
                log(f"table {name}: TTL on {ttl['AttributeName']}")


# CloudFormation AWS::SQS::Queue properties that are plain SQS attributes.
SQS_ATTRIBUTES = [
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
]


def create_queues(sqs, template, resolver, log):
    pending = of_type(template, "AWS::SQS::Queue")
    # Dead-letter queues first: the others' RedrivePolicy needs their ARN.
    pending.sort(key=lambda item: "RedrivePolicy" in item[1].get("Properties", {}))
    for logical, res in pending:
        props = resolver.resolve(res["Properties"])
        name = props["QueueName"]
        attrs = {k: str(props[k]) for k in SQS_ATTRIBUTES if k in props}
        if "RedrivePolicy" in props:
            attrs["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
            log(f"queue {name}: exists")
        except ClientError as e:
            if e.response["Error"]["Code"] not in (
                "AWS.SimpleQueueService.NonExistentQueue",
                "QueueDoesNotExist",
            ):
                raise
            url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
            log(f"queue {name}: created ({logical})")
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        resolver.physical[logical] = {"url": url, "Arn": arn, "QueueName": name}


def put_secret(sm, name, value, log, kms_key_id=None):
    try:
        current = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"]
        if current == value:
            log(f"secret {name}: exists")
        else:
            sm.put_secret_value(SecretId=name, SecretString=value)
            log(f"secret {name}: updated")
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        extra = {"KmsKeyId": kms_key_id} if kms_key_id else {}
        sm.create_secret(Name=name, SecretString=value, **extra)
        log(f"secret {name}: created")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--template", required=True)
    p.add_argument("--stack-name", default="adsync")
    p.add_argument("--ddb-endpoint", required=True)
    p.add_argument("--aws-endpoint", required=True, help="moto (Secrets Manager, SQS)")
    p.add_argument("--api-key", required=True, help="the local API key (only its SHA-256 is stored)")
    p.add_argument("--lwa-client-id", required=True)
    p.add_argument("--lwa-client-secret", required=True)
    p.add_argument("--param", action="append", default=[], help="Name=Value template parameter override")
    args = p.parse_args()

    def log(msg):
        print(f"  {msg}", file=sys.stderr)

    with open(args.template) as f:
        template = yaml.load(f, Loader=CfnLoader)
    overrides = dict(kv.split("=", 1) for kv in args.param)
    resolver = Resolver(template, args.stack_name, overrides)

    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    )
    cfg = Config(retries={"max_attempts": 3, "mode": "standard"})
    ddb = session.client("dynamodb", endpoint_url=args.ddb_endpoint, config=cfg)
    sqs = session.client("sqs", endpoint_url=args.aws_endpoint, config=cfg)
    sm = session.client("secretsmanager", endpoint_url=args.aws_endpoint, config=cfg)
    kms = session.client("kms", endpoint_url=args.aws_endpoint, config=cfg)

    create_keys(kms, template, resolver, log)
    create_tables(ddb, template, resolver, log)
    create_queues(sqs, template, resolver, log)

    env_template = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    env = {k: resolver.resolve(v) for k, v in env_template.get("Variables", {}).items()}
    for _, res in of_type(template, "AWS::Serverless::Function"):
        fn_env = res.get("Properties", {}).get("Environment", {}).get("Variables", {})
        env.update({k: resolver.resolve(v) for k, v in fn_env.items()})
    # The local stack is not AWS: its endpoint overrides are plain http.
    env["ADSYNC_RUNNING_IN_AWS"] = "false"

    # Every template secret plus the operator-created LwA secret, with local values.
    seeds = {
        env["LWA_CREDENTIALS_SECRET"]: json.dumps(
            {"client_id": args.lwa_client_id, "client_secret": args.lwa_client_secret}
        ),
        env["API_KEYS_SECRET"]: json.dumps(
            {"keys": [{"name": "local", "sha256": hashlib.sha256(args.api_key.encode()).hexdigest()}]}
        ),
    }
    for logical, res in of_type(template, "AWS::SecretsManager::Secret"):
        props = resolver.resolve(res["Properties"])
        name = props["Name"]
        put_secret(sm, name, seeds.get(name, props.get("SecretString", "{}")), log, props.get("KmsKeyId"))
        seeds.pop(name, None)
    for name, value in seeds.items():
        put_secret(sm, name, value, log, env.get("ADSYNC_KMS_KEY_ID"))

    for k, v in env.items():
        if v is None or str(v) == "":
            continue
        s = str(v)
        if any(c in s for c in " \t\n'\"$`\\"):
            raise ValueError(f"environment value of {k} needs quoting: {s!r}")
        print(f"{k}={s}")


if __name__ == "__main__":
    try:
        main()
    except (ClientError, ValueError, RuntimeError, OSError) as e:
        print(f"setup.py: {e}", file=sys.stderr)
        sys.exit(1)
