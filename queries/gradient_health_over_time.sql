-- Gradient health per episode over time: the aggregate health score (grad_health, 1 = healthy,
-- from the gradients probe) at the first step, at its worst and at the last step of each episode,
-- the epoch of the worst point, the trend (least-squares change per epoch), the number of
-- unhealthy steps (score < 0.5) and of non-finite gradient elements.
-- Packs recorded without gradient telemetry (minimal profile) have no grad_health column; the
-- UNION ALL BY NAME with an empty row supplies it as NULL there, so the query still runs.
WITH health AS (
    SELECT episode_id, step, epoch, grad_health, grad_nonfinite_count
    FROM (
        FROM steps
        UNION ALL BY NAME
        SELECT NULL::FLOAT AS grad_health, NULL::FLOAT AS grad_nonfinite_count WHERE false
    )
)
SELECT
    episode_id,
    count(*)                                                    AS steps,
    round(arg_min(grad_health, step)::DOUBLE, 3)                AS health_first,
    round(min(grad_health)::DOUBLE, 3)                          AS health_worst,
    arg_min(epoch, (grad_health, epoch)) FILTER (WHERE grad_health IS NOT NULL) AS worst_epoch,  -- the first, on a tie
    round(arg_max(grad_health, step)::DOUBLE, 3)                AS health_last,
    round(regr_slope(grad_health, epoch), 4)                    AS trend_per_epoch,
    count(*) FILTER (WHERE grad_health < 0.5)                   AS unhealthy_steps,
    sum(grad_nonfinite_count)                                   AS nonfinite_gradients
FROM health
GROUP BY episode_id
ORDER BY health_worst ASC NULLS LAST, episode_id;
