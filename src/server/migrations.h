// Numbered schema migrations, embedded from src/server/migrations/*.sql.
#pragma once

#include <vector>

namespace tidefs {

struct Migration {
  int number;
  const char* name;
  const char* sql;
};

// In ascending order of number.
const std::vector<Migration>& Migrations();

}  // namespace tidefs
