# "myapp:Greeter" in examples/turnout.yaml and in README's grpcurl example.
class Greeter:
    def __init__(self, greeting="hello"):
        self.greeting = greeting

    def __call__(self, request):
        return f"{self.greeting}, {request.args.get('name', 'world')}"
