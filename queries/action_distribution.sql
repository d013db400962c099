-- Action distribution: how often the behaviour policy took each action, per split and overall.
-- A policy trained offline can only learn actions that occur; a share near zero means too little
-- exploration to learn that action from this pack. Unlabelled steps (action NULL) are left out.
SELECT
    coalesce(split, 'all')                                                 AS split,
    action,
    count(*)                                                               AS steps,
    round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY split), 2)   AS percent
FROM steps
WHERE action IS NOT NULL
GROUP BY GROUPING SETS ((split, action), (action))
ORDER BY split NULLS FIRST, steps DESC, action;
