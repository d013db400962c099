-- Episode outcomes by scenario: how episodes ended (outcome), their final and best accuracy, how
-- many parameters seeds added, and how many diverged, so a pack's coverage of scenarios and
-- outcomes can be checked before training on it.
SELECT
    scenario,
    outcome,
    count(*)                                              AS episodes,
    round(avg(final_accuracy), 2)                         AS mean_final_accuracy,
    round(avg(best_accuracy), 2)                          AS mean_best_accuracy,
    round(avg(params_added), 0)                           AS mean_params_added,
    count(*) FILTER (WHERE diverged)                      AS diverged
FROM episodes
GROUP BY scenario, outcome
ORDER BY scenario, episodes DESC, outcome;
