-- Customers who bought before but not in the 90 days before now.
SELECT e.user_id AS id
FROM events e
WHERE e.name = 'purchase'
GROUP BY e.user_id
HAVING MAX(e.created_at) < NOW() - INTERVAL 90 DAY
