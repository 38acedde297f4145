"""Model registry: register every trained model, and move the alias only to a better one.

Aliases (`models:/name@champion`), not the deprecated stages. The decision, the metric and both
values are written as tags on the run and on the new model version, so the UI shows why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class Champion:
    """What the alias points at: its version and that version's run's promotion metric."""

    version: str | None
    value: float | None


def look_up_champion(client: MlflowClient, name: str, promote: PromoteParams) -> Champion:
    """The current holder of `promote.alias` on `name` (none when the model is not registered yet),
    and the value of `promote.metric` on its run (None when it has none)."""
    from mlflow.exceptions import MlflowException

    try:
        holder = client.get_registered_model(name).aliases.get(promote.alias)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return Champion(None, None)
    if holder is None:
        return Champion(None, None)
    holder_run = client.get_model_version(name, str(holder)).run_id
    value = client.get_run(holder_run).data.metrics.get(promote.metric) if holder_run else None
    return Champion(str(holder), value)


def register_and_promote(
    client: MlflowClient,
    model_uri: str,
    name: str,
    run_id: str,
    promote: PromoteParams,
    candidate_value: float,
    champion: Champion | None = None,
) -> PromotionDecision:
    """Register `model_uri` as a new version of `name`; give it the alias if it beats `champion`
    (looked up now unless given: the trainer looks it up while its model is still being
    serialised, so the verdict is known before the version exists and is registered with it)."""
    if champion is None:
        champion = look_up_champion(client, name, promote)
    promoted = (
        champion.version is None
        or champion.value is None
        or is_better(candidate_value, champion.value, promote.higher_is_better)
    )
    verdict = PromotionDecision(
        name=name,
        version="",
        alias=promote.alias,
        metric=promote.metric,
        candidate_value=candidate_value,
        champion_version=champion.version,
        champion_value=champion.value,
        promoted=promoted,
    )
    tags = verdict.tags()
    # The version gets the verdict only (in the same request that creates it); the run gets every
    # detail, in one batch.
    version_tags = {k: tags[k] for k in ("mlstack.promotion.decision", "mlstack.promotion.summary")}
    version = str(mlflow.register_model(model_uri, name, tags=version_tags).version)
    if promoted:
        client.set_registered_model_alias(name, promote.alias, version)
    client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    return replace(verdict, version=version)
