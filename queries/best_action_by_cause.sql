-- Does the right intervention depend on the hidden cause? For every branched decision step (where
-- counterfactual rollouts tried each valid action from the same state), which action turned out
-- best, per scenario, and by how many points of value (accuracy minus the parameter cost; the
-- accuracy in packs that record no value) it beat WAIT on average. Tied steps (best_action null,
-- see best_actions) are left out. Only steps where a
-- seed could be germinated are counted, so every row compares the same choices. A policy that can
-- infer the cause from the telemetry can pick the action this table says is best for it.
WITH branched AS (
    SELECT
        e.scenario,
        s.best_action,
        list_max([coalesce(c.value, c.accuracy) FOR c IN s.counterfactual])
          - list_max([coalesce(c.value, c.accuracy) FOR c IN s.counterfactual IF c.action = 'WAIT'])
          AS best_minus_wait
    FROM steps s
    JOIN episodes e USING (episode_id)
    WHERE s.best_action IS NOT NULL
      AND list_contains([c.action FOR c IN s.counterfactual], 'GERMINATE_CONV')
)
SELECT
    scenario,
    best_action,
    count(*)                                                       AS steps,
    round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY scenario), 1) AS percent_of_scenario,
    round(avg(best_minus_wait), 2)                                 AS mean_gain_over_wait
FROM branched
GROUP BY scenario, best_action
ORDER BY scenario, steps DESC, best_action;
