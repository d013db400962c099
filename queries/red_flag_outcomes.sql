-- Red-flag frequency and what followed each flag: for every red flag raised at a decision step
-- (sustained_plateau, vanishing_gradients, overfitting, ...), how often it was raised, what the
-- policy usually did, how often it intervened, how validation accuracy moved over the following
-- hindsight_epochs, and how often the decision was judged good in hindsight.
-- The usual action is the most frequent one; a tie goes to the first in alphabetical order (so the
-- answer does not depend on the order DuckDB's threads read the rows in).
WITH flagged AS (
    SELECT unnest(red_flags) AS flag, action, val_accuracy, hindsight_accuracy, was_good_decision
    FROM steps
    WHERE len(red_flags) > 0
),
usual AS (
    SELECT flag, action AS usual_action
    FROM (SELECT flag, action, count(*) AS n FROM flagged GROUP BY flag, action)
    QUALIFY row_number() OVER (PARTITION BY flag ORDER BY n DESC, action) = 1
)
SELECT
    flag,
    count(*)                                                        AS steps,
    any_value(usual_action)                                         AS usual_action,
    round(100.0 * avg((action <> 'WAIT')::INTEGER), 1)              AS intervened_percent,
    round(avg(hindsight_accuracy - val_accuracy), 3)                AS mean_accuracy_change_after,
    round(100.0 * avg(was_good_decision::INTEGER), 1)               AS good_percent
FROM flagged JOIN usual USING (flag)
GROUP BY flag
ORDER BY steps DESC, flag;
