-- How good decisions were in hindsight, per action: how many were judged (was_good_decision is
-- NULL when the episode ended before hindsight_epochs passed), the share judged good, the mean
-- accuracy change over the hindsight window, and, for steps where counterfactual branches were
-- rolled out, how often the action taken was the best one.
SELECT
    action,
    count(*)                                                                   AS steps,
    count(was_good_decision)                                                   AS judged,
    round(100.0 * avg(was_good_decision::INTEGER), 1)                          AS good_percent,
    round(avg(hindsight_accuracy - val_accuracy), 3)                           AS mean_accuracy_change_after,
    count(best_action)                                                         AS branched,
    round(100.0 * avg((best_action = action)::INTEGER), 1)                     AS matched_best_percent
FROM steps
WHERE action IS NOT NULL
GROUP BY action
ORDER BY steps DESC, action;
