-- Customers with exactly one purchase.
SELECT e.user_id AS id
FROM events e
WHERE e.name = 'purchase'
GROUP BY e.user_id
HAVING COUNT(*) = 1
