/* Stand-in for critest's nonewprivs image: installed setuid root; prints the
 * effective uid it runs with (root unless no_new_privs kept the caller's). */
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", geteuid()); return 0; }
