-- Every customer the shop knows.
SELECT id FROM users
