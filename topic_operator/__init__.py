"""The SkillTopic operator (``skillscale operator``): one topic's servers as a resource.

A ``SkillTopic`` (``k8s/crd-skilltopic.yaml``) declares a topic, its skills
source, matcher, limits, replica bounds and queue target; the operator
reconciles it into a Deployment and a KEDA ScaledObject owned by it (deleting
the resource deletes both) and reports status conditions.

The folder is ``topic_operator/`` (installed as ``skillscale.topic_operator``):
a top-level ``operator/`` would shadow the standard library's ``operator``
module for anything run from the repository root.
"""
