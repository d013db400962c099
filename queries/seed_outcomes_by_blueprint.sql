-- Seed outcomes by blueprint: every seed germinated in the pack's episodes (episodes.seed_outcomes),
-- grouped by blueprint: how many were fossilized (kept) or culled, the success rate, the mean
-- accuracy improvement they brought and how many epochs they lived.
WITH seeds AS (
    SELECT unnest(seed_outcomes, recursive := true)
    FROM episodes
)
SELECT
    blueprint,
    count(*)                                                                AS seeds,
    count(*) FILTER (WHERE lower(outcome) = 'fossilized')                   AS fossilized,
    count(*) FILTER (WHERE lower(outcome) = 'culled')                       AS culled,
    round(100.0 * count(*) FILTER (WHERE lower(outcome) = 'fossilized') / count(*), 1)
                                                                            AS success_percent,
    round(avg(improvement), 3)                                              AS mean_improvement,
    round(avg(ended_epoch - germinated_epoch), 2)                           AS mean_epochs_alive
FROM seeds
GROUP BY blueprint
ORDER BY seeds DESC, blueprint;
