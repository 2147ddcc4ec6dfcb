from django.http import HttpResponse


def home(request):
    return HttpResponse("<h1>paas-channels example project</h1>")
