"""Model registry: register every trained model, and move the alias only to a better one.

Aliases (`models:/name@champion`), not the deprecated stages. The decision, the metric and both
values are written as tags on the run and on the new model version, so the UI shows why.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from mlstack.params import PromoteParams, is_better


@dataclass(frozen=True)
class PromotionDecision:
    name: str
    version: str
    alias: str
    metric: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    promoted: bool

    @property
    def summary(self) -> str:
        if self.champion_version is None:
            return f"promoted to @{self.alias}: first version of {self.name}"
        if self.champion_value is None:
            return (
                f"promoted to @{self.alias}: champion v{self.champion_version} has no "
                f"{self.metric} to compare"
            )
        relation = "beats" if self.promoted else "does not beat"
        verdict = f"promoted to @{self.alias}" if self.promoted else f"@{self.alias} unchanged"
        return (
            f"{verdict}: {self.metric} {self.candidate_value:.6g} {relation} "
            f"{self.champion_value:.6g} of v{self.champion_version}"
        )

    def tags(self) -> dict[str, str]:
        return {
            "mlstack.promotion.decision": "promoted" if self.promoted else "kept",
            "mlstack.promotion.alias": self.alias,
            "mlstack.promotion.metric": self.metric,
            "mlstack.promotion.candidate_value": repr(self.candidate_value),
            "mlstack.promotion.champion_version": self.champion_version or "",
            "mlstack.promotion.champion_value": (
                "" if self.champion_value is None else repr(self.champion_value)
            ),
            "mlstack.promotion.summary": self.summary,
        }


def current_alias_holder(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version holding `alias`, or None (the registered model must exist)."""
    holder = client.get_registered_model(name).aliases.get(alias)
    return None if holder is None else str(holder)


def register_and_promote(
    client: MlflowClient,
    model_uri: str,
    name: str,
    run_id: str,
    promote: PromoteParams,
    candidate_value: float,
) -> PromotionDecision:
    """Register `model_uri` as a new version of `name`; give it the alias if it is better."""
    version = str(mlflow.register_model(model_uri, name).version)
    holder = current_alias_holder(client, name, promote.alias)
    champion_value: float | None = None
    if holder is not None:
        holder_run = client.get_model_version(name, holder).run_id
        if holder_run:
            champion_value = client.get_run(holder_run).data.metrics.get(promote.metric)
    promoted = (
        holder is None
        or champion_value is None
        or is_better(candidate_value, champion_value, promote.higher_is_better)
    )
    if promoted:
        client.set_registered_model_alias(name, promote.alias, version)
    decision = PromotionDecision(
        name=name,
        version=version,
        alias=promote.alias,
        metric=promote.metric,
        candidate_value=candidate_value,
        champion_version=holder,
        champion_value=champion_value,
        promoted=promoted,
    )
    # Model versions have no batch call: they get the verdict only; the run gets every detail.
    for key in ("mlstack.promotion.decision", "mlstack.promotion.summary"):
        client.set_model_version_tag(name, version, key, decision.tags()[key])
    client.log_batch(
        run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in decision.tags().items()]
    )
    return decision
