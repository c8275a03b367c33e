//! Kubernetes' protobuf request encoding (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed commands (`create namespace|configmap|secret|deployment|service|job|
//! serviceaccount|token`,
//! `run`) send: the `k8s\0` + `runtime.Unknown` envelope, decoded to the same JSON the rest
//! of the server works on. Fields outside these tables are refused, never dropped.

use base64::Engine;
use serde_json::{Map, Value, json};

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtobufError {
    /// The body does not start with Kubernetes' `k8s\0` magic.
    #[error("protobuf body without the k8s envelope")]
    NoEnvelope,
    /// The bytes are not valid protobuf.
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    /// The kind is not one this server decodes from protobuf.
    #[error("protobuf bodies of kind {0} are not supported; send JSON")]
    Kind(String),
    /// A field this server does not map.
    #[error("protobuf field {tag} of {message} is not supported; send JSON")]
    Field {
        /// The message type.
        message: &'static str,
        /// The field number.
        tag: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(&'static Schema),
    /// map<string, string>
    MapStr,
    /// map<string, bytes>, values base64.
    MapBytes,
    /// map<string, Quantity>
    MapQuantity,
    /// metav1.Time {seconds, nanos}, as RFC 3339.
    Time,
    /// intstr.IntOrString {type, intVal, strVal}.
    IntOrString,
}

#[derive(Debug)]
struct Field {
    tag: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
    /// A Go pointer field: present means set, so 0 / false is kept. Other scalars are
    /// always written by Go's encoder and, like JSON's omitempty, dropped when zero.
    keep_zero: bool,
}

#[derive(Debug)]
struct Schema {
    name: &'static str,
    fields: &'static [Field],
}

const fn f(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        repeated: false,
        keep_zero: false,
    }
}

/// A pointer field (`*int32`, `*bool`) whose zero is meaningful.
const fn ptr(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        repeated: false,
        keep_zero: true,
    }
}

const fn list(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        repeated: true,
        keep_zero: false,
    }
}

const EMPTY: Schema = Schema {
    name: "Status",
    fields: &[],
};
const OBJECT_META: Schema = Schema {
    name: "ObjectMeta",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "generateName", Ty::Str),
        f(3, "namespace", Ty::Str),
        f(5, "uid", Ty::Str),
        f(6, "resourceVersion", Ty::Str),
        f(7, "generation", Ty::Int),
        f(8, "creationTimestamp", Ty::Time),
        f(11, "labels", Ty::MapStr),
        f(12, "annotations", Ty::MapStr),
        list(14, "finalizers", Ty::Str),
    ],
};
const NAMESPACE_SPEC: Schema = Schema {
    name: "NamespaceSpec",
    fields: &[list(1, "finalizers", Ty::Str)],
};
const NAMESPACE: Schema = Schema {
    name: "Namespace",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&NAMESPACE_SPEC)),
        f(3, "status", Ty::Msg(&EMPTY)),
    ],
};
const CONFIG_MAP: Schema = Schema {
    name: "ConfigMap",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "data", Ty::MapStr),
        f(3, "binaryData", Ty::MapBytes),
        ptr(4, "immutable", Ty::Bool),
    ],
};
const SECRET: Schema = Schema {
    name: "Secret",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "data", Ty::MapBytes),
        f(3, "type", Ty::Str),
        f(4, "stringData", Ty::MapStr),
        ptr(5, "immutable", Ty::Bool),
    ],
};
const LABEL_SELECTOR: Schema = Schema {
    name: "LabelSelector",
    fields: &[f(1, "matchLabels", Ty::MapStr)],
};
const CONTAINER_PORT: Schema = Schema {
    name: "ContainerPort",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "hostPort", Ty::Int),
        f(3, "containerPort", Ty::Int),
        f(4, "protocol", Ty::Str),
        f(5, "hostIP", Ty::Str),
    ],
};
const ENV_VAR: Schema = Schema {
    name: "EnvVar",
    fields: &[f(1, "name", Ty::Str), f(2, "value", Ty::Str)],
};
const RESOURCES: Schema = Schema {
    name: "ResourceRequirements",
    fields: &[
        f(1, "limits", Ty::MapQuantity),
        f(2, "requests", Ty::MapQuantity),
    ],
};
const CONTAINER: Schema = Schema {
    name: "Container",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "image", Ty::Str),
        list(3, "command", Ty::Str),
        list(4, "args", Ty::Str),
        f(5, "workingDir", Ty::Str),
        list(6, "ports", Ty::Msg(&CONTAINER_PORT)),
        list(7, "env", Ty::Msg(&ENV_VAR)),
        f(8, "resources", Ty::Msg(&RESOURCES)),
        f(13, "terminationMessagePath", Ty::Str),
        f(14, "imagePullPolicy", Ty::Str),
        f(16, "stdin", Ty::Bool),
        f(17, "stdinOnce", Ty::Bool),
        f(18, "tty", Ty::Bool),
        f(20, "terminationMessagePolicy", Ty::Str),
    ],
};
const POD_SPEC: Schema = Schema {
    name: "PodSpec",
    fields: &[
        list(2, "containers", Ty::Msg(&CONTAINER)),
        f(3, "restartPolicy", Ty::Str),
        ptr(4, "terminationGracePeriodSeconds", Ty::Int),
        ptr(5, "activeDeadlineSeconds", Ty::Int),
        f(6, "dnsPolicy", Ty::Str),
        f(7, "nodeSelector", Ty::MapStr),
        f(8, "serviceAccountName", Ty::Str),
        f(10, "nodeName", Ty::Str),
        f(19, "schedulerName", Ty::Str),
        list(20, "initContainers", Ty::Msg(&CONTAINER)),
    ],
};
const POD_TEMPLATE_SPEC: Schema = Schema {
    name: "PodTemplateSpec",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&POD_SPEC)),
    ],
};
const POD: Schema = Schema {
    name: "Pod",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&POD_SPEC)),
        f(3, "status", Ty::Msg(&EMPTY)),
    ],
};
const ROLLING_UPDATE: Schema = Schema {
    name: "RollingUpdateDeployment",
    fields: &[
        f(1, "maxUnavailable", Ty::IntOrString),
        f(2, "maxSurge", Ty::IntOrString),
    ],
};
const DEPLOYMENT_STRATEGY: Schema = Schema {
    name: "DeploymentStrategy",
    fields: &[
        f(1, "type", Ty::Str),
        f(2, "rollingUpdate", Ty::Msg(&ROLLING_UPDATE)),
    ],
};
const DEPLOYMENT_SPEC: Schema = Schema {
    name: "DeploymentSpec",
    fields: &[
        ptr(1, "replicas", Ty::Int),
        f(2, "selector", Ty::Msg(&LABEL_SELECTOR)),
        f(3, "template", Ty::Msg(&POD_TEMPLATE_SPEC)),
        f(4, "strategy", Ty::Msg(&DEPLOYMENT_STRATEGY)),
        f(5, "minReadySeconds", Ty::Int),
        ptr(6, "revisionHistoryLimit", Ty::Int),
        f(7, "paused", Ty::Bool),
        ptr(9, "progressDeadlineSeconds", Ty::Int),
    ],
};
const DEPLOYMENT: Schema = Schema {
    name: "Deployment",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&DEPLOYMENT_SPEC)),
        f(3, "status", Ty::Msg(&EMPTY)),
    ],
};
const SERVICE_PORT: Schema = Schema {
    name: "ServicePort",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "protocol", Ty::Str),
        f(3, "port", Ty::Int),
        f(4, "targetPort", Ty::IntOrString),
        f(5, "nodePort", Ty::Int),
    ],
};
const SERVICE_SPEC: Schema = Schema {
    name: "ServiceSpec",
    fields: &[
        list(1, "ports", Ty::Msg(&SERVICE_PORT)),
        f(2, "selector", Ty::MapStr),
        f(3, "clusterIP", Ty::Str),
        f(4, "type", Ty::Str),
        f(7, "sessionAffinity", Ty::Str),
        list(18, "clusterIPs", Ty::Str),
    ],
};
const SERVICE: Schema = Schema {
    name: "Service",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&SERVICE_SPEC)),
        f(3, "status", Ty::Msg(&EMPTY)),
    ],
};
const JOB_SPEC: Schema = Schema {
    name: "JobSpec",
    fields: &[
        ptr(1, "parallelism", Ty::Int),
        ptr(2, "completions", Ty::Int),
        ptr(3, "activeDeadlineSeconds", Ty::Int),
        f(4, "selector", Ty::Msg(&LABEL_SELECTOR)),
        ptr(5, "manualSelector", Ty::Bool),
        f(6, "template", Ty::Msg(&POD_TEMPLATE_SPEC)),
        ptr(7, "backoffLimit", Ty::Int),
        ptr(8, "ttlSecondsAfterFinished", Ty::Int),
        f(9, "completionMode", Ty::Str),
        ptr(10, "suspend", Ty::Bool),
    ],
};
const JOB: Schema = Schema {
    name: "Job",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&JOB_SPEC)),
        f(3, "status", Ty::Msg(&EMPTY)),
    ],
};

const SCOPED_REQUIREMENT: Schema = Schema {
    name: "ScopedResourceSelectorRequirement",
    fields: &[
        f(1, "scopeName", Ty::Str),
        f(2, "operator", Ty::Str),
        list(3, "values", Ty::Str),
    ],
};
const SCOPE_SELECTOR: Schema = Schema {
    name: "ScopeSelector",
    fields: &[list(1, "matchExpressions", Ty::Msg(&SCOPED_REQUIREMENT))],
};
const RESOURCE_QUOTA_SPEC: Schema = Schema {
    name: "ResourceQuotaSpec",
    fields: &[
        f(1, "hard", Ty::MapQuantity),
        list(2, "scopes", Ty::Str),
        f(3, "scopeSelector", Ty::Msg(&SCOPE_SELECTOR)),
    ],
};
const RESOURCE_QUOTA: Schema = Schema {
    name: "ResourceQuota",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&RESOURCE_QUOTA_SPEC)),
        f(3, "status", Ty::Msg(&EMPTY)),
    ],
};

const CROSS_VERSION_REFERENCE: Schema = Schema {
    name: "CrossVersionObjectReference",
    fields: &[
        f(1, "kind", Ty::Str),
        f(2, "name", Ty::Str),
        f(3, "apiVersion", Ty::Str),
    ],
};
const HPA_V1_SPEC: Schema = Schema {
    name: "HorizontalPodAutoscalerSpec",
    fields: &[
        f(1, "scaleTargetRef", Ty::Msg(&CROSS_VERSION_REFERENCE)),
        ptr(2, "minReplicas", Ty::Int),
        f(3, "maxReplicas", Ty::Int),
        ptr(4, "targetCPUUtilizationPercentage", Ty::Int),
    ],
};
/// `autoscaling/v1` (what `kubectl autoscale` sends).
const HPA_V1: Schema = Schema {
    name: "HorizontalPodAutoscaler",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&HPA_V1_SPEC)),
        f(3, "status", Ty::Msg(&EMPTY)),
    ],
};
const METRIC_TARGET: Schema = Schema {
    name: "MetricTarget",
    fields: &[f(1, "type", Ty::Str), ptr(4, "averageUtilization", Ty::Int)],
};
const RESOURCE_METRIC_SOURCE: Schema = Schema {
    name: "ResourceMetricSource",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "target", Ty::Msg(&METRIC_TARGET)),
    ],
};
const METRIC_SPEC: Schema = Schema {
    name: "MetricSpec",
    fields: &[
        f(1, "type", Ty::Str),
        f(4, "resource", Ty::Msg(&RESOURCE_METRIC_SOURCE)),
    ],
};
const HPA_V2_SPEC: Schema = Schema {
    name: "HorizontalPodAutoscalerSpec",
    fields: &[
        f(1, "scaleTargetRef", Ty::Msg(&CROSS_VERSION_REFERENCE)),
        ptr(2, "minReplicas", Ty::Int),
        f(3, "maxReplicas", Ty::Int),
        list(4, "metrics", Ty::Msg(&METRIC_SPEC)),
    ],
};
/// `autoscaling/v2`, resource utilisation metrics only (what newer kubectl autoscale sends).
const HPA_V2: Schema = Schema {
    name: "HorizontalPodAutoscaler",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&HPA_V2_SPEC)),
        f(3, "status", Ty::Msg(&EMPTY)),
    ],
};

const POLICY_RULE: Schema = Schema {
    name: "PolicyRule",
    fields: &[
        list(1, "verbs", Ty::Str),
        list(2, "apiGroups", Ty::Str),
        list(3, "resources", Ty::Str),
        list(4, "resourceNames", Ty::Str),
        list(5, "nonResourceURLs", Ty::Str),
    ],
};
const AGGREGATION_RULE: Schema = Schema {
    name: "AggregationRule",
    fields: &[list(1, "clusterRoleSelectors", Ty::Msg(&LABEL_SELECTOR))],
};
/// `Role` and `ClusterRole` (`kubectl create role|clusterrole`).
const ROLE: Schema = Schema {
    name: "Role",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        list(2, "rules", Ty::Msg(&POLICY_RULE)),
        f(3, "aggregationRule", Ty::Msg(&AGGREGATION_RULE)),
    ],
};
const SUBJECT: Schema = Schema {
    name: "Subject",
    fields: &[
        f(1, "kind", Ty::Str),
        f(2, "apiGroup", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "namespace", Ty::Str),
    ],
};
const ROLE_REF: Schema = Schema {
    name: "RoleRef",
    fields: &[
        f(1, "apiGroup", Ty::Str),
        f(2, "kind", Ty::Str),
        f(3, "name", Ty::Str),
    ],
};
/// `RoleBinding` and `ClusterRoleBinding` (`kubectl create rolebinding|clusterrolebinding`).
const ROLE_BINDING: Schema = Schema {
    name: "RoleBinding",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        list(2, "subjects", Ty::Msg(&SUBJECT)),
        f(3, "roleRef", Ty::Msg(&ROLE_REF)),
    ],
};
const RESOURCE_ATTRIBUTES: Schema = Schema {
    name: "ResourceAttributes",
    fields: &[
        f(1, "namespace", Ty::Str),
        f(2, "verb", Ty::Str),
        f(3, "group", Ty::Str),
        f(4, "version", Ty::Str),
        f(5, "resource", Ty::Str),
        f(6, "subresource", Ty::Str),
        f(7, "name", Ty::Str),
    ],
};
const NON_RESOURCE_ATTRIBUTES: Schema = Schema {
    name: "NonResourceAttributes",
    fields: &[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)],
};
const ACCESS_REVIEW_SPEC: Schema = Schema {
    name: "SubjectAccessReviewSpec",
    fields: &[
        f(1, "resourceAttributes", Ty::Msg(&RESOURCE_ATTRIBUTES)),
        f(
            2,
            "nonResourceAttributes",
            Ty::Msg(&NON_RESOURCE_ATTRIBUTES),
        ),
        f(3, "user", Ty::Str),
        list(4, "groups", Ty::Str),
        f(6, "uid", Ty::Str),
    ],
};
/// Go writes a non-pointer status even when empty; its zero fields are dropped.
const ACCESS_REVIEW_STATUS: Schema = Schema {
    name: "SubjectAccessReviewStatus",
    fields: &[
        f(1, "allowed", Ty::Bool),
        f(2, "reason", Ty::Str),
        f(3, "evaluationError", Ty::Str),
        f(4, "denied", Ty::Bool),
    ],
};
/// `SelfSubjectAccessReview`, `SubjectAccessReview`, `LocalSubjectAccessReview`
/// (`kubectl auth can-i`).
const ACCESS_REVIEW: Schema = Schema {
    name: "SubjectAccessReview",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&ACCESS_REVIEW_SPEC)),
        f(3, "status", Ty::Msg(&ACCESS_REVIEW_STATUS)),
    ],
};
const RULES_REVIEW_SPEC: Schema = Schema {
    name: "SelfSubjectRulesReviewSpec",
    fields: &[f(1, "namespace", Ty::Str)],
};
const RULES_REVIEW_STATUS: Schema = Schema {
    name: "SubjectRulesReviewStatus",
    fields: &[
        f(3, "incomplete", Ty::Bool),
        f(4, "evaluationError", Ty::Str),
    ],
};
/// `SelfSubjectRulesReview` (`kubectl auth can-i --list`).
const RULES_REVIEW: Schema = Schema {
    name: "SelfSubjectRulesReview",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&RULES_REVIEW_SPEC)),
        f(3, "status", Ty::Msg(&RULES_REVIEW_STATUS)),
    ],
};
const USER_INFO: Schema = Schema {
    name: "UserInfo",
    fields: &[
        f(1, "username", Ty::Str),
        f(2, "uid", Ty::Str),
        list(3, "groups", Ty::Str),
    ],
};
const SELF_SUBJECT_REVIEW_STATUS: Schema = Schema {
    name: "SelfSubjectReviewStatus",
    fields: &[f(1, "userInfo", Ty::Msg(&USER_INFO))],
};
/// `SelfSubjectReview` (`kubectl auth whoami`).
const SELF_SUBJECT_REVIEW: Schema = Schema {
    name: "SelfSubjectReview",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "status", Ty::Msg(&SELF_SUBJECT_REVIEW_STATUS)),
    ],
};

/// `ServiceAccount` (`kubectl create serviceaccount`).
const SERVICE_ACCOUNT: Schema = Schema {
    name: "ServiceAccount",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        ptr(4, "automountServiceAccountToken", Ty::Bool),
    ],
};
const BOUND_OBJECT_REFERENCE: Schema = Schema {
    name: "BoundObjectReference",
    fields: &[
        f(1, "kind", Ty::Str),
        f(2, "apiVersion", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "uid", Ty::Str),
    ],
};
const TOKEN_REQUEST_SPEC: Schema = Schema {
    name: "TokenRequestSpec",
    fields: &[
        list(1, "audiences", Ty::Str),
        f(3, "boundObjectRef", Ty::Msg(&BOUND_OBJECT_REFERENCE)),
        ptr(4, "expirationSeconds", Ty::Int),
    ],
};
const TOKEN_REQUEST_STATUS: Schema = Schema {
    name: "TokenRequestStatus",
    fields: &[
        f(1, "token", Ty::Str),
        f(2, "expirationTimestamp", Ty::Time),
    ],
};
/// `TokenRequest` (`kubectl create token`).
const TOKEN_REQUEST: Schema = Schema {
    name: "TokenRequest",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&TOKEN_REQUEST_SPEC)),
        f(3, "status", Ty::Msg(&TOKEN_REQUEST_STATUS)),
    ],
};

/// The kinds decoded from protobuf, by `apiVersion` and `kind`.
fn schema_of(api_version: &str, kind: &str) -> Option<&'static Schema> {
    Some(match kind {
        "HorizontalPodAutoscaler" if api_version == "autoscaling/v1" => &HPA_V1,
        "HorizontalPodAutoscaler" if api_version == "autoscaling/v2" => &HPA_V2,
        "Namespace" => &NAMESPACE,
        "ConfigMap" => &CONFIG_MAP,
        "Secret" => &SECRET,
        "Pod" => &POD,
        "Service" => &SERVICE,
        "Deployment" => &DEPLOYMENT,
        "Job" => &JOB,
        "ResourceQuota" => &RESOURCE_QUOTA,
        "Role" | "ClusterRole" => &ROLE,
        "RoleBinding" | "ClusterRoleBinding" => &ROLE_BINDING,
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            &ACCESS_REVIEW
        }
        "SelfSubjectRulesReview" => &RULES_REVIEW,
        "SelfSubjectReview" => &SELF_SUBJECT_REVIEW,
        "TokenRequest" => &TOKEN_REQUEST,
        "ServiceAccount" => &SERVICE_ACCOUNT,
        _ => return None,
    })
}

/// Protobuf wire values.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or(ProtobufError::Malformed("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::Malformed("varint too long"))
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ProtobufError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| ProtobufError::Malformed("length"))?;
                if len > self.buf.len() {
                    return Err(ProtobufError::Malformed("truncated field"));
                }
                let (data, rest) = self.buf.split_at(len);
                self.buf = rest;
                Wire::Bytes(data)
            }
            _ => return Err(ProtobufError::Malformed("unsupported wire type")),
        };
        Ok(Some((key >> 3, wire)))
    }
}

fn text(bytes: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtobufError::Malformed("invalid UTF-8"))
}

/// Decodes a map entry message {key = 1, value = 2}.
fn entry(bytes: &[u8]) -> Result<(String, Option<Wire<'_>>), ProtobufError> {
    let mut r = Reader { buf: bytes };
    let (mut key, mut value) = (String::new(), None);
    while let Some((tag, wire)) = r.next()? {
        match (tag, wire) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, w) => value = Some(w),
            _ => return Err(ProtobufError::Malformed("map entry")),
        }
    }
    Ok((key, value))
}

fn value(ty: Ty, wire: Wire<'_>) -> Result<Value, ProtobufError> {
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Bytes(b)) => json!(text(b)?),
        // Two's complement: negative int32/int64 values arrive as 10-byte varints.
        #[expect(
            clippy::cast_possible_wrap,
            reason = "protobuf int64 is two's complement"
        )]
        (Ty::Int, Wire::Varint(v)) => json!(v as i64),
        (Ty::Bool, Wire::Varint(v)) => json!(v != 0),
        (Ty::Msg(schema), Wire::Bytes(b)) => message(schema, b)?,
        (Ty::Time, Wire::Bytes(b)) => {
            let mut r = Reader { buf: b };
            let mut seconds = 0;
            while let Some((tag, w)) = r.next()? {
                if let (1, Wire::Varint(s)) = (tag, w) {
                    seconds = i64::try_from(s).unwrap_or(0);
                }
            }
            if seconds == 0 {
                return Ok(Value::Null);
            }
            let ts = jiff::Timestamp::from_second(seconds)
                .map_err(|_| ProtobufError::Malformed("time out of range"))?;
            json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        }
        (Ty::IntOrString, Wire::Bytes(b)) => {
            let mut r = Reader { buf: b };
            let (mut kind, mut int, mut string) = (0, 0i64, String::new());
            while let Some((tag, w)) = r.next()? {
                match (tag, w) {
                    (1, Wire::Varint(k)) => kind = k,
                    #[expect(clippy::cast_possible_wrap, reason = "two's complement int32")]
                    (2, Wire::Varint(i)) => int = i as i64,
                    (3, Wire::Bytes(s)) => string = text(s)?,
                    _ => return Err(ProtobufError::Malformed("IntOrString")),
                }
            }
            if kind == 1 { json!(string) } else { json!(int) }
        }
        _ => return Err(ProtobufError::Malformed("field type mismatch")),
    })
}

fn message(schema: &'static Schema, bytes: &[u8]) -> Result<Value, ProtobufError> {
    let mut out = Map::new();
    let mut reader = Reader { buf: bytes };
    while let Some((tag, wire)) = reader.next()? {
        let Some(field) = schema.fields.iter().find(|f| f.tag == tag) else {
            // Go's encoder writes every non-pointer field; an unmapped one holding only its
            // zero value says nothing, anything else would be lost, so it is refused.
            if is_zero(&wire) {
                continue;
            }
            return Err(ProtobufError::Field {
                message: schema.name,
                tag,
            });
        };
        match field.ty {
            Ty::MapStr | Ty::MapBytes | Ty::MapQuantity => {
                let Wire::Bytes(entry_bytes) = wire else {
                    return Err(ProtobufError::Malformed("map field"));
                };
                let (key, v) = entry(entry_bytes)?;
                let v = match (field.ty, v) {
                    (Ty::MapStr, Some(Wire::Bytes(s))) => json!(text(s)?),
                    (Ty::MapBytes, Some(Wire::Bytes(s))) => {
                        json!(base64::engine::general_purpose::STANDARD.encode(s))
                    }
                    (Ty::MapQuantity, Some(Wire::Bytes(q))) => {
                        // Quantity { string = 1 }
                        let mut qr = Reader { buf: q };
                        let mut s = String::new();
                        while let Some((1, Wire::Bytes(t))) = qr.next()? {
                            s = text(t)?;
                        }
                        json!(s)
                    }
                    (_, None) => json!(""),
                    _ => return Err(ProtobufError::Malformed("map value")),
                };
                out.entry(field.name)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .ok_or(ProtobufError::Malformed("map"))?
                    .insert(key, v);
            }
            ty if field.repeated => {
                out.entry(field.name)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .ok_or(ProtobufError::Malformed("list"))?
                    .push(value(ty, wire)?);
            }
            ty => {
                let v = value(ty, wire)?;
                let zero = match &v {
                    Value::Null => true,
                    Value::String(s) => s.is_empty(),
                    Value::Number(n) => n.as_i64() == Some(0),
                    Value::Bool(b) => !b,
                    _ => false,
                };
                // Empty status messages carry nothing.
                let status = matches!(ty, Ty::Msg(s) if s.fields.is_empty());
                if !status && (!zero || field.keep_zero) {
                    out.insert(field.name.to_owned(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Whether a wire value is its type's zero (0, empty, or a message of zeros).
fn is_zero(wire: &Wire<'_>) -> bool {
    match wire {
        Wire::Varint(v) => *v == 0,
        Wire::Bytes(b) => {
            b.is_empty() || {
                let mut r = Reader { buf: b };
                let mut all_zero = true;
                loop {
                    match r.next() {
                        Ok(Some((_, w))) => all_zero &= is_zero(&w),
                        Ok(None) => break all_zero,
                        Err(_) => break false,
                    }
                }
            }
        }
    }
}

/// Decodes a `k8s\0`-enveloped protobuf object into its JSON form.
///
/// # Errors
/// When the envelope, the bytes, the kind or a field is not understood.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let inner = body
        .strip_prefix(b"k8s\0")
        .ok_or(ProtobufError::NoEnvelope)?;
    let mut r = Reader { buf: inner };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((tag, wire)) = r.next()? {
        match (tag, wire) {
            (1, Wire::Bytes(meta)) => {
                let mut m = Reader { buf: meta };
                while let Some((t, w)) = m.next()? {
                    match (t, w) {
                        (1, Wire::Bytes(v)) => api_version = text(v)?,
                        (2, Wire::Bytes(k)) => kind = text(k)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(bytes)) => raw = bytes,
            // contentEncoding / contentType are empty for plain objects.
            _ => {}
        }
    }
    let schema = schema_of(&api_version, &kind).ok_or_else(|| ProtobufError::Kind(kind.clone()))?;
    let mut obj = message(schema, raw)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

/// For tests and debugging: the bytes as protobuf would encode a string field.
#[cfg(test)]
fn field_bytes(tag: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let push_varint = |mut v: u64, out: &mut Vec<u8>| {
        loop {
            let byte = u8::try_from(v & 0x7f).unwrap_or(0);
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    };
    push_varint((tag << 3) | 2, &mut out);
    push_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut type_meta = field_bytes(1, api_version.as_bytes());
        type_meta.extend(field_bytes(2, kind.as_bytes()));
        let mut body = b"k8s\0".to_vec();
        body.extend(field_bytes(1, &type_meta));
        body.extend(field_bytes(2, raw));
        body
    }

    #[test]
    fn a_namespace_with_labels_decodes_to_json() {
        let mut label = field_bytes(1, b"team");
        label.extend(field_bytes(2, b"web"));
        let mut meta = field_bytes(1, b"demo");
        meta.extend(field_bytes(11, &label));
        let raw = [
            field_bytes(1, &meta),
            field_bytes(2, &[]),
            field_bytes(3, &[]),
        ]
        .concat();
        let obj = decode(&envelope("v1", "Namespace", &raw)).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "demo", "labels": {"team": "web"}}, "spec": {}})
        );
    }

    #[test]
    fn kubectl_auth_can_i_s_access_review_decodes_with_its_empty_status() {
        let attrs = [
            field_bytes(1, b"demo"),
            field_bytes(2, b"create"),
            field_bytes(3, b""),
            field_bytes(5, b"pods"),
        ]
        .concat();
        // Go writes the non-pointer status: allowed=false, empty strings, denied=false.
        let status = [
            vec![1 << 3, 0],
            field_bytes(2, b""),
            field_bytes(3, b""),
            vec![4 << 3, 0],
        ]
        .concat();
        let raw = [
            field_bytes(1, &[]),
            field_bytes(2, &field_bytes(1, &attrs)),
            field_bytes(3, &status),
        ]
        .concat();
        let obj = decode(&envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            &raw,
        ))
        .unwrap();
        assert_eq!(
            obj["spec"],
            json!({"resourceAttributes": {"namespace": "demo", "verb": "create", "resource": "pods"}})
        );
    }

    #[test]
    fn kubectl_create_token_s_request_decodes_with_audiences_lifetime_and_bound_pod() {
        let bound = [field_bytes(1, b"Pod"), field_bytes(3, b"web")].concat();
        // expirationSeconds 600 is the varint 0xd8 0x04.
        let spec = [
            field_bytes(1, b"api"),
            field_bytes(1, b"vault"),
            field_bytes(3, &bound),
            vec![4 << 3, 0xd8, 0x04],
        ]
        .concat();
        let raw = [
            field_bytes(1, &[]),
            field_bytes(2, &spec),
            field_bytes(3, &field_bytes(2, &[])),
        ]
        .concat();
        let obj = decode(&envelope("authentication.k8s.io/v1", "TokenRequest", &raw)).unwrap();
        assert_eq!(
            obj["spec"],
            json!({"audiences": ["api", "vault"], "expirationSeconds": 600,
                   "boundObjectRef": {"kind": "Pod", "name": "web"}})
        );
    }

    #[test]
    fn kubectl_autoscale_s_v1_autoscaler_decodes_with_its_cpu_target() {
        let target = [
            field_bytes(1, b"Deployment"),
            field_bytes(2, b"web"),
            field_bytes(3, b"apps/v1"),
        ]
        .concat();
        // Varint fields: minReplicas 1, maxReplicas 3, targetCPUUtilizationPercentage 50.
        let spec = [
            field_bytes(1, &target),
            vec![2 << 3, 1, 3 << 3, 3, 4 << 3, 50],
        ]
        .concat();
        let raw = [
            field_bytes(1, &field_bytes(1, b"web")),
            field_bytes(2, &spec),
        ]
        .concat();
        let obj = decode(&envelope("autoscaling/v1", "HorizontalPodAutoscaler", &raw)).unwrap();
        assert_eq!(
            obj["spec"],
            json!({
                "scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 50,
            })
        );
    }

    #[test]
    fn secret_bytes_become_base64() {
        let mut data = field_bytes(1, b"password");
        data.extend(field_bytes(2, b"hunter2"));
        let raw = [field_bytes(1, &field_bytes(1, b"s")), field_bytes(2, &data)].concat();
        let obj = decode(&envelope("v1", "Secret", &raw)).unwrap();
        assert_eq!(obj["data"]["password"], "aHVudGVyMg==");
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused_not_dropped() {
        let raw = field_bytes(99, b"x");
        assert_eq!(
            decode(&envelope("v1", "ConfigMap", &raw)),
            Err(ProtobufError::Field {
                message: "ConfigMap",
                tag: 99
            })
        );
        assert!(matches!(
            decode(&envelope("v1", "Widget", &[])),
            Err(ProtobufError::Kind(_))
        ));
        assert_eq!(decode(b"{}"), Err(ProtobufError::NoEnvelope));
    }
}
