from rankalign.cli import main

main(prog_name="rankalign")
