-- Interventions that followed a plateau: decisions (any action but WAIT) taken while validation
-- accuracy had stalled for 3 or more epochs (plateau_epochs, a base feature of every profile),
-- grouped by action, with how accuracy moved afterwards (hindsight_accuracy is val_accuracy
-- hindsight_epochs later) and how often the decision was judged good in hindsight.
SELECT
    action,
    count(*)                                                 AS decisions,
    round(avg(plateau_epochs), 2)                            AS mean_plateau_epochs,
    max(plateau_epochs)                                      AS longest_plateau,
    round(avg(val_accuracy), 2)                              AS mean_accuracy_at_decision,
    round(avg(hindsight_accuracy - val_accuracy), 3)         AS mean_accuracy_change_after,
    round(100.0 * avg(was_good_decision::INTEGER), 1)        AS good_percent
FROM decisions
WHERE plateau_epochs >= 3
GROUP BY action
ORDER BY decisions DESC, action;
